"""No import circle in the ltdet2 package: every module is read with ``ast`` (imports at the top of a module and
inside functions alike, relative ones resolved), and the graph of its imports of ltdet2 modules must hold no circle.

An import of a package counts as one of its ``__init__``; ``from pkg import name`` counts as one of the submodule
``pkg.name`` when there is one, else of ``pkg``'s ``__init__``. Nothing is imported: the files are only parsed.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "ltdet2")


def package_modules(root, package=None):
    """{dotted module name: path} of every module of the package in folder ``root`` (``__init__.py``: the package)."""
    package = package or os.path.basename(root)
    parent = os.path.dirname(root)
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py")))
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            parts = os.path.relpath(path, parent)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    assert package in modules, f"{root} is not a package"
    return modules


def imported_modules(name, path, modules):
    """[(imported module, line)] of the modules of ``modules`` that module ``name`` (at ``path``) imports."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += [(alias.name, node.lineno)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per dot after the first
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found += [(submodule if submodule in modules else base, node.lineno)]
    return [(target, line) for target, line in found if target in modules]


def import_graph(modules):
    """{module: {imported module: first line}} over ``modules``."""
    graph = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imported_modules(name, path, modules):
            edges.setdefault(target, line)
    return graph


def circles(graph):
    """The strongly connected components of ``graph`` with more than one module, or one importing itself (Tarjan),
    each as a sorted list."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(start):
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(circle, graph, modules, base=REPO):
    """The circle's modules and the imports that tie them (importer's file, relative to ``base``:line -> imported)."""
    members = set(circle)
    ties = [
        f"    {os.path.relpath(modules[a], base)}:{line} -> {b}"
        for a in circle
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return f"circle of {len(circle)} modules: {', '.join(circle)}\n" + "\n".join(ties)


MODULES = package_modules(ROOT)
GRAPH = import_graph(MODULES)
# each subpackage (ltdet2/engine/, ...) and the package's own modules: a circle is reported under every one it touches
SUBPACKAGES = sorted(
    name.split(".")[1] for name, path in MODULES.items() if name.count(".") == 1 and path.endswith("__init__.py")
)
AREAS = ["ltdet2", *SUBPACKAGES]


def area_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "ltdet2"


@pytest.mark.parametrize("area", AREAS)
def test_no_import_circle(area):
    found = [c for c in circles(GRAPH) if any(area_of(m) == area for m in c)]
    where = "ltdet2's own modules" if area == "ltdet2" else f"ltdet2/{area}/"
    assert not found, f"import circles touching {where}:\n" + "\n".join(describe(c, GRAPH, MODULES) for c in found)


def test_the_graph_counts_every_kind_of_import(tmp_path):
    """The walker itself, on a made-up package: a relative import inside a function, ``from pkg import submodule``, an
    import of a package (its ``__init__``), ``from pkg import name`` (not a submodule: ``pkg``'s ``__init__``)."""
    files = {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "import os\n\ndef f():\n    from .sub import b\n\nthing = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import c\n",
        "pkg/c.py": "import pkg.sub\nfrom pkg import thing\n",
        "pkg/d.py": "from pkg.sub.b import x\nfrom . import a\n",
    }
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = package_modules(str(tmp_path / "pkg"))
    assert sorted(modules) == ["pkg", "pkg.a", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.b"]
    graph = import_graph(modules)
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.sub.b": 4},
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.c": 1},
        "pkg.c": {"pkg.sub": 1, "pkg": 2},
        "pkg.d": {"pkg.sub.b": 1, "pkg.a": 2},
    }
    assert circles(graph) == [["pkg", "pkg.a", "pkg.c", "pkg.sub.b"]]
    assert "pkg/a.py:4 -> pkg.sub.b" in describe(circles(graph)[0], graph, modules, str(tmp_path)).replace(os.sep, "/")
    assert circles({"x": {"x": 1}, "y": {}}) == [["x"]]
