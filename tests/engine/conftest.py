import pytest

from fixtures.runs import train_pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A tiny run whose phase 'pretrain' finished (fixtures.runs.train_pretrain), once per test module."""
    return train_pretrain(str(tmp_path_factory.mktemp("trained") / "run"), tiny_dataset)
