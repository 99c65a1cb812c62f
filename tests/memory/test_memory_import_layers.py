"""ltdet2.memory in layers (issue 27; tests/test_import_graph.py checks that no circle is left): the sync policy and
its collectives below the stores and indicators, which checkpoints' per-rank names sit above, counting imports inside
functions too. The sync policy's names are still importable from ltdet2.memory.distributed."""

import ast
import glob
import os

import ltdet2.memory
from ltdet2.memory import distributed, sync

PACKAGE_DIR = os.path.dirname(ltdet2.memory.__file__)


def sibling_imports() -> dict:
    """{module file stem: the stems of the sibling modules it imports (``from .x import``), anywhere in it}."""
    graph = {}
    for path in glob.glob(os.path.join(PACKAGE_DIR, "*.py")):
        with open(path) as f:
            tree = ast.parse(f.read())
        stem = os.path.basename(path)[:-3]
        graph[stem] = {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
    return graph


def test_the_layers_import_only_below_them():
    graph = sibling_imports()
    assert graph["base"] == set()
    assert graph["sync"] == {"base"}
    assert graph["indicators"] == {"base", "sync"}
    assert graph["distributed"] == {"base", "indicators", "sync"}


def test_sync_names_are_importable_from_distributed():
    for name in sync.__all__:
        assert name in distributed.__all__
        assert getattr(distributed, name) is getattr(sync, name)
