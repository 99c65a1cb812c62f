import logging

import pytest

from fixtures.logs import logged_messages
from fixtures.runs import train_pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A tiny run whose phase 'pretrain' finished (fixtures.runs.train_pretrain), once per test module."""
    return train_pretrain(str(tmp_path_factory.mktemp("trained") / "run"), tiny_dataset)


@pytest.fixture
def messages():
    """The messages of the detectron2 logger from INFO on (Detectron2's setup_logger stops its propagation)."""
    with logged_messages("detectron2", logging.INFO) as found:
        yield found
