"""Search-method registry: the built-in methods as lazy `"module:Class"` strings, plus plugins.

Imports no method: a method's module is imported when its name is first looked up. Other packages add
methods through the entry-point group `flowscale_ray.methods` (see docs/plugins.md); code can register a
`SearchMethod` subclass in-process with `@register_method` (in `search.base`).

Iteration order (what `flowscale methods` lists and error messages name): the built-ins below, then
in-process registrations, then plugins by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowscale_ray.plugins import METHOD_GROUP, Registry

BUILTIN_METHODS: dict[str, str] = {
    "bon": "flowscale_ray.search.best_of_n:BestOfN",
    "base": "flowscale_ray.search.best_of_n:Base",
    "code": "flowscale_ray.search.code:CoDe",
    "svdd": "flowscale_ray.search.code:SVDD",
    "rbf": "flowscale_ray.search.rbf:RolloverBudgetForcing",
    "sop": "flowscale_ray.search.search_over_paths:SearchOverPaths",
    "smc": "flowscale_ray.search.smc:SMC",
    "abf": "flowscale_ray.search.adaptive_rbf:AdaptiveBudgetForcing",
    "vt": "flowscale_ray.search.verifier_threshold:VerifierThreshold",
    "sh": "flowscale_ray.search.successive_halving:SuccessiveHalving",
}


def check_method(name: str, obj: Any) -> str | None:
    """The method contract, checked without importing `search.base`: a class with a `Config` dataclass,
    `search` and `planned_nfe`, whose `name` is the name it is registered under."""
    if not isinstance(obj, type):
        return f"expected a SearchMethod subclass, got {type(obj).__name__}"
    missing = [a for a in ("search", "planned_nfe", "Config") if not hasattr(obj, a)]
    if missing:
        return f"{obj.__name__} lacks {', '.join(missing)} (subclass flowscale_ray.search.base.SearchMethod)"
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return f"{obj.__name__}.Config must be a dataclass"
    if getattr(obj, "name", None) != name:
        return f"{obj.__name__}.name is {getattr(obj, 'name', None)!r}; it must equal the entry point name {name!r}"
    return None


METHODS: Registry[Any] = Registry("method", BUILTIN_METHODS, METHOD_GROUP, check=check_method)
