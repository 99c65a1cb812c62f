"""ltdet2.data in layers (issue 27; tests/test_import_graph.py checks that no circle is left): pure per-category
computations, then validation and the json metadata, then the registry-facing dataset functions, each importing only
below it, counting imports inside functions too. The names that moved down a layer are still importable from the
modules they came from."""

import ast
import importlib
import os

import pytest

import ltdet2.data

PACKAGE_DIR = os.path.dirname(ltdet2.data.__file__)


def module_imports(package_dir: str, package: str) -> dict:
    """{module: set of the package's modules it imports, at the top or inside a function}; a submodule does not
    count the ``__init__`` of its own packages, which Python runs first anyway, unless it takes a name from it."""
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, package_dir)[:-3].replace(os.sep, ".")
                name = package if name == "__init__" else f"{package}.{name.removesuffix('.__init__')}"
                modules[name] = path
    graph = {}
    for name, path in modules.items():
        own_package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        graph[name] = set()
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            base = own_package.rsplit(".", node.level - 1)[0] if node.level > 1 else own_package
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            graph[name].update(m for m in submodules if m in modules)
            if not all(m in modules for m in submodules):  # names taken from the module itself
                graph[name].add(target)
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


def test_the_layers_import_only_below_them():
    graph = module_imports(PACKAGE_DIR, "ltdet2.data")
    assert graph["ltdet2.data.categories"] == set()
    assert graph["ltdet2.data.validation"] == {"ltdet2.data.categories"}
    assert graph["ltdet2.data.category_meta"] == {"ltdet2.data.categories"}
    assert graph["ltdet2.data.datasets"] == {
        "ltdet2.data.categories",
        "ltdet2.data.category_meta",
        "ltdet2.data.validation",
    }


@pytest.mark.parametrize(
    "old, new, names",
    [
        (
            "ltdet2.data.class_counts",
            "ltdet2.data.categories",
            ["unique_image_class_pairs", "class_counts", "dataset_dict_pairs"],
        ),
        (
            "ltdet2.data.lvis_meta",
            "ltdet2.data.categories",
            ["FREQUENCY_GROUPS", "RARE_MAX_IMAGES", "COMMON_MAX_IMAGES", "frequency_from_image_count"],
        ),
        (
            "ltdet2.data.lvis_meta",
            "ltdet2.data.category_meta",
            ["LVISMeta", "load_lvis_meta", "count_from_annotations", "clear_lvis_meta_cache"],
        ),
    ],
)
def test_moved_names_are_importable_from_their_former_modules(old, new, names):
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert name in old_module.__all__
        assert getattr(old_module, name) is getattr(new_module, name)


def test_registry_facing_functions_stay_where_configs_name_them():
    # LazyConfig writes a callable's module into the config it saves ("_target_")
    from ltdet2.data.class_counts import dataset_class_image_count
    from ltdet2.data.lvis_meta import lvis_meta_from_dataset

    assert lvis_meta_from_dataset.__module__ == "ltdet2.data.lvis_meta"
    assert dataset_class_image_count.__module__ == "ltdet2.data.class_counts"
