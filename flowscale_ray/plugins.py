"""Lazy registries of models, rewards and search methods: built-ins, in-process registrations, plugins.

A `Registry` is a read-only `Mapping` name -> object (a model factory, a reward class/factory/function, a
search-method class) filled from three sources, looked up in this order:

1. in-process registrations (`register_model("name")`, `register_reward("name")`, `register_method`);
2. the built-ins: a table of `"package.module:attribute"` strings, imported only when that name is used;
3. plugins: Python entry points of another installed distribution, in the groups below, loaded only when
   that name is used. A built-in (or registered) name wins over a plugin of the same name: the plugin is
   ignored with a warning and stays reachable as `module:attribute`. Two plugins declaring the same name
   are refused, when that name is used, with one line naming both.

A plugin that fails to load (import error, missing attribute, wrong kind of object) raises `PluginError`,
whose message is one line naming the plugin, its distribution and the error, and only when that name is
looked up: a broken plugin never breaks the rest (listing everything with `.items()` skips it with a
one-line warning).

This module is a leaf (standard library only): the registries import no implementation until asked.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

from flowscale_ray.errors import FlowscaleError, first_line
from flowscale_ray.utils import import_object

MODEL_GROUP = "flowscale_ray.models"
REWARD_GROUP = "flowscale_ray.rewards"
METHOD_GROUP = "flowscale_ray.methods"

log = logging.getLogger("flowscale_ray.plugins")

T = TypeVar("T")


class PluginError(FlowscaleError, ValueError):
    """A plugin entry point that cannot be used. str() is one line, "<kind>.name: ...", naming the plugin and
    the error; a ValueError, so that building a component reports it as a bad job-file field."""


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"plugin {where} (entry point {ep.name} = {ep.value} in group {ep.group})"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> object; see the module docstring. Iteration: built-ins in table order, then in-process
    registrations in order, then plugins sorted by name; looking names up or iterating imports nothing."""

    def __init__(
        self,
        kind: str,
        builtins: Mapping[str, str],
        group: str,
        check: Callable[[str, Any], str | None] | None = None,
    ) -> None:
        self.kind = kind  # "model", "reward", "method": used in messages
        self.group = group
        self._builtins = dict(builtins)
        self._check = check  # (name, obj) -> None if fine, else what is wrong (applied to plugins)
        self._registered: dict[str, T] = {}
        self._loaded: dict[str, T] = {}
        self._plugins_key: tuple[str, ...] | None = None
        self._plugins: dict[str, list[metadata.EntryPoint]] = {}
        self._warned: set[tuple[str, str]] = set()

    # -- sources ----------------------------------------------------------------------------------------
    def register(self, name: str, obj: T) -> T:
        """Register `obj` under `name` in this process (it wins over a built-in or plugin of that name)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name: expected a non-empty string, got {name!r}")
        self._registered[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Forget an in-process registration (built-ins and plugins cannot be removed)."""
        self._registered.pop(name, None)

    @property
    def builtin_names(self) -> tuple[str, ...]:
        return tuple(self._builtins)

    def builtin_target(self, name: str) -> str:
        """The `module:attribute` string of a built-in."""
        return self._builtins[name]

    def plugin_entry_points(self) -> dict[str, list[metadata.EntryPoint]]:
        """Entry points of this group by name, including shadowed ones (rescanned when sys.path changes)."""
        key = tuple(sys.path)
        if self._plugins_key != key:
            found: dict[str, list[metadata.EntryPoint]] = {}
            eps: Iterable[metadata.EntryPoint]
            try:
                eps = metadata.entry_points(group=self.group)
            except Exception as exc:  # a corrupt distribution's metadata: say so, carry on without plugins
                log.warning("cannot list %s plugins (group %s): %s", self.kind, self.group, first_line(exc))
                eps = ()
            for ep in eps:
                found.setdefault(ep.name, []).append(ep)
            self._plugins, self._plugins_key = found, key
            # Plugins are looked up anew; loaded built-ins stay.
            self._loaded = {n: obj for n, obj in self._loaded.items() if n in self._builtins}
        return self._plugins

    def source(self, name: str) -> str:
        """Where `name` comes from: 'registered', 'built-in' or the plugin; KeyError if unknown."""
        if name in self._registered:
            return "registered"
        if name in self._builtins:
            return "built-in"
        eps = self.plugin_entry_points().get(name)
        if eps:
            return "; ".join(_describe(ep) for ep in eps)
        raise KeyError(name)

    # -- Mapping ----------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        if name in self._registered:
            return self._registered[name]
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtins:
            obj = import_object(self._builtins[name])
        else:
            eps = self.plugin_entry_points().get(name)
            if not eps:
                raise KeyError(name)
            obj = self._load_plugin(name, eps)
        self._loaded[name] = obj
        return obj

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self._registered or name in self._builtins or name in self.plugin_entry_points()

    def __iter__(self) -> Iterator[str]:
        seen = set(self._builtins)
        yield from self._builtins
        for name in self._registered:
            if name not in seen:
                seen.add(name)
                yield name
        for name in sorted(self.plugin_entry_points()):
            if name in seen:
                self._warn_shadowed(name)
            else:
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self) -> Iterator[tuple[str, T]]:  # type: ignore[override]
        """(name, object) pairs, loading each; a broken plugin is skipped with a one-line warning."""
        for name in self:
            try:
                yield name, self[name]
            except PluginError as exc:
                if (name, str(exc)) not in self._warned:  # once per plugin and process
                    self._warned.add((name, str(exc)))
                    log.warning("skipping a broken plugin: %s", exc)

    def values(self) -> Iterator[T]:  # type: ignore[override]
        for _, obj in self.items():
            yield obj

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={list(self)!r})"

    # -- plugins ----------------------------------------------------------------------------------------
    def _load_plugin(self, name: str, eps: list[metadata.EntryPoint]) -> T:
        if len(eps) > 1:
            raise PluginError(
                f"{self.kind}.name: {self.kind} {name!r} is declared by {len(eps)} plugins: "
                + "; ".join(_describe(ep) for ep in eps)
                + ": uninstall one, or name the one you mean as 'module:attribute'"
            )
        ep = eps[0]
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"{self.kind}.name: {self.kind} {name!r} comes from {_describe(ep)}, which failed to load: "
                f"{first_line(exc)}"
            ) from None
        problem = self._check(name, obj) if self._check is not None else None
        if problem:
            raise PluginError(
                f"{self.kind}.name: {self.kind} {name!r} comes from {_describe(ep)}, which is unusable: {problem}"
            )
        return obj

    def _warn_shadowed(self, name: str) -> None:
        for ep in self._plugins.get(name, ()):
            key = (name, ep.value)
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "%s %r: %s is ignored: the %s name is taken (use %r to reach the plugin)",
                    self.kind,
                    name,
                    _describe(ep),
                    self.source(name),
                    ep.value,
                )


def check_callable(name: str, obj: Any) -> str | None:
    """Models and rewards: a factory, class or function."""
    return None if callable(obj) else f"expected a class, factory or function, got {type(obj).__name__}"
