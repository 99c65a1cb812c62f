import logging

import pytest

from fixtures.runs import train_pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A tiny run whose phase 'pretrain' finished (fixtures.runs.train_pretrain), once per test module."""
    return train_pretrain(str(tmp_path_factory.mktemp("trained") / "run"), tiny_dataset)


@pytest.fixture
def messages():
    """The messages of the detectron2 logger from INFO on (Detectron2's setup_logger stops its propagation)."""
    found = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: found.append(record.getMessage())
    logger = logging.getLogger("detectron2")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield found
    logger.removeHandler(handler)
    logger.setLevel(level)
