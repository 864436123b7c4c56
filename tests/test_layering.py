"""Layers import in one direction, and modules import each other without cycles.

Every import in the package counts, including those inside functions (lazy imports still tie modules
together); `if TYPE_CHECKING:` blocks do not, since they never run. A module imports only modules of its
own layer or of the layers below it (LAYERS, bottom first). The math and the search methods know nothing of
Ray, storage or metrics.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "flowscale_ray"
FORBIDDEN = {"ray", "pyarrow", "s3fs", "fsspec", "prometheus_client", "boto3", "botocore"}

# Bottom first. An entry names a module or a package (and everything in it); the longest entry that
# covers a module decides its layer, so a module can sit below the rest of its package.
LAYERS: list[tuple[str, ...]] = [
    # Leaves: standard library (or torch/PIL) only, importable from anywhere.
    (
        "flowscale_ray",  # the package's own __init__
        "flowscale_ray.errors",
        "flowscale_ray.utils",
        "flowscale_ray.plugins",  # the lazy registries' helper: imports no implementation
        "flowscale_ray.prompts",
        "flowscale_ray.number_words",
        "flowscale_ray.images",
        "flowscale_ray.logs",
    ),
    ("flowscale_ray.core",),  # sampling math
    ("flowscale_ray.search",),  # methods decide, never call a model
    ("flowscale_ray.models",),
    ("flowscale_ray.rewards",),  # hf_common shares the diffusers helpers; mode_log_density builds a gmm
    ("flowscale_ray.builtin",),  # the counting task: a model and rewards
    ("flowscale_ray.config",),  # job files name the methods (search registry)
    # What the executors report to; the rest of `observe` (live display, report) sits above io.
    ("flowscale_ray.observe.recorder", "flowscale_ray.observe.metrics"),
    ("flowscale_ray.execution",),
    ("flowscale_ray.io",),
    ("flowscale_ray.observe",),  # report reads runs through io
    ("flowscale_ray.runtime",),  # the only layer below the top that imports Ray
    (  # entry points: run a job, the command line, benchmarks
        "flowscale_ray.run",
        "flowscale_ray.job",
        "flowscale_ray.cli",
        "flowscale_ray.bench",
        "flowscale_ray.benchmark",
        "flowscale_ray.schema_command",
        "flowscale_ray.__main__",
    ),
]

# (importer, imported): upward imports that are deliberate. Keep this short and say why.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Cycles known and accepted, as the set of modules in the strongly connected component, with why.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip |= {id(n) for n in ast.walk(child)}
    return skip


def imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else names in pkg.
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            names |= subs
            if len(subs) < len(node.names):
                names.add(base)
    return names


def internal_imports(path: Path) -> set[str]:
    """The package's own modules imported by this file (a name inside a module maps to that module)."""
    out = set()
    for name in imports(path):
        if not (name == "flowscale_ray" or name.startswith("flowscale_ray.")):
            continue
        while name not in MODULES and "." in name:  # `import flowscale_ray.a.b.attr`-style: its module
            name = name.rpartition(".")[0]
        out.add(name)
    out.discard(module_name(path))
    return out


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            covers = module == entry or (entry != "flowscale_ray" and module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


GRAPH: dict[str, set[str]] = {m: internal_imports(p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"add these modules to a layer in LAYERS: {missing}"


def test_layers_import_downward_only():
    bad = []
    for module, deps in sorted(GRAPH.items()):
        mine = layer_of(module)
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if mine is None or theirs is None or theirs <= mine or (module, dep) in ALLOWED_UPWARD:
                continue
            bad.append(
                f"{module} (layer {mine}: {LAYERS[mine][0]}) imports {dep} (layer {theirs}: {LAYERS[theirs][0]})"
            )
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_leaves_import_nothing_of_the_package_but_leaves():
    leaves = set(LAYERS[0])
    for module in leaves & set(MODULES):
        assert GRAPH[module] <= leaves, (module, GRAPH[module] - leaves)


def strongly_connected_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def _cycle_in(component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the failure message."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(GRAPH[node] & component):
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if dep not in parent:
                    parent[dep] = node
                    nxt.append(dep)
        frontier = nxt
    return sorted(component)


def test_no_import_cycles():
    cycles = [c for c in strongly_connected_components(GRAPH) if len(c) > 1]
    unknown = [c for c in cycles if frozenset(c) not in KNOWN_CYCLES]
    assert not unknown, "import cycles:\n" + "\n".join(" -> ".join(_cycle_in(c)) for c in unknown)


def test_known_cycles_still_exist():
    """An accepted cycle that is gone must leave the list, so it cannot come back unnoticed."""
    cycles = {frozenset(c) for c in strongly_connected_components(GRAPH) if len(c) > 1}
    assert not set(KNOWN_CYCLES) - cycles, set(KNOWN_CYCLES) - cycles


def test_the_graph_sees_lazy_imports():
    """Sanity check of the walker: imports inside functions and relative imports count."""
    assert "flowscale_ray.models.shift" in GRAPH["flowscale_ray.run.components"]  # inside a function
    assert "flowscale_ray.models.registry" in GRAPH["flowscale_ray.models"]


def test_registries_are_leaves():
    """The registries name the implementations as strings and import none of them."""
    for module, own in [
        ("flowscale_ray.models.registry", {"flowscale_ray.models.base"}),
        ("flowscale_ray.rewards.registry", set()),
        ("flowscale_ray.search.registry", set()),
    ]:
        assert GRAPH[module] <= set(LAYERS[0]) | own, (module, GRAPH[module])
    assert GRAPH["flowscale_ray.search"] <= {
        "flowscale_ray.search.base",
        "flowscale_ray.search.protocol",
        "flowscale_ray.search.registry",
    }


def test_no_component_registers_itself():
    """Built-ins are listed in the registries' tables, not registered by decorators at import time."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for dec in getattr(node, "decorator_list", ()):
                target = dec.func if isinstance(dec, ast.Call) else dec
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                if name.startswith("register_"):
                    found.append(f"{module}: @{name} on {node.name}")
    assert not found, found


@pytest.mark.parametrize("layer", ["core", "search"])
def test_core_and_search_stay_pure(layer):
    files = sorted((PKG / layer).rglob("*.py"))
    assert files
    for f in files:
        roots = {n.split(".")[0] for n in imports(f)}
        assert not roots & FORBIDDEN, f"{f} imports {roots & FORBIDDEN}"
        inner = internal_imports(f)
        if layer == "core":  # the math does not even know the methods or the executors
            assert all(n.startswith("flowscale_ray.core") or n == "flowscale_ray.errors" for n in inner), (f, inner)
        if layer == "search":  # methods never call a model (the leaf helpers aside)
            allowed = set(LAYERS[0]) - {"flowscale_ray.prompts", "flowscale_ray.images"}
            assert all(n.startswith("flowscale_ray.search") or n in allowed for n in inner), (f, inner)


def test_nothing_below_the_runtime_imports_ray():
    runtime = next(i for i, layer in enumerate(LAYERS) if "flowscale_ray.runtime" in layer)
    for module, path in MODULES.items():
        layer = layer_of(module)
        if layer is not None and layer < runtime:
            assert "ray" not in {n.split(".")[0] for n in imports(path)}, module
