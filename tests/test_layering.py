"""Layers import in one direction: the math and the search methods know nothing of Ray, storage or metrics."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flowscale_ray"
FORBIDDEN = {"ray", "pyarrow", "s3fs", "fsspec", "prometheus_client", "boto3", "botocore"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", ["core", "search"])
def test_core_and_search_stay_pure(layer):
    files = sorted((PKG / layer).rglob("*.py"))
    assert files
    for f in files:
        roots = {n.split(".")[0] for n in imports(f)}
        assert not roots & FORBIDDEN, f"{f} imports {roots & FORBIDDEN}"
        if layer == "core":  # the math does not even know the methods or the executors
            inner = {n for n in imports(f) if n.startswith("flowscale_ray.")}
            assert all(n.startswith("flowscale_ray.core") for n in inner), (f, inner)
        if layer == "search":  # methods never call a model
            inner = {n for n in imports(f) if n.startswith("flowscale_ray.")}
            assert all(n.startswith("flowscale_ray.search") for n in inner), (f, inner)
