import pytest

from ltdet2.data import register_lt_shapes

from fixtures.models import TINY_LT_SHAPES


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(train, val) names of a tiny LT-Shapes registered for the session."""
    root = str(tmp_path_factory.mktemp("data") / "lt_shapes_e2e")
    return register_lt_shapes(root=root, seed=3, spec=TINY_LT_SHAPES, name_prefix="lt_shapes_e2e")
