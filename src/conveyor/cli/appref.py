"""Resolving ``-A/--app`` the way Celery users expect."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from conveyor.app import Conveyor
from conveyor.exceptions import ConfigurationError


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import {name!r}: no module named {exc.name!r}"
            ) from None
        raise


def _find_in(module: ModuleType) -> Conveyor | None:
    for attr in ("app", "celery"):
        found = getattr(module, attr, None)
        if isinstance(found, Conveyor):
            return found
    apps = [v for v in vars(module).values() if isinstance(v, Conveyor)]
    if len(apps) == 1:
        return apps[0]
    if len(apps) > 1:
        raise ConfigurationError(
            f"{module.__name__} defines several apps; name one with {module.__name__}:ATTR"
        )
    return None


def find_app(spec: str) -> Conveyor:
    """The app named by ``spec``: ``pkg.mod:attr``, ``pkg.mod`` (its ``app``/``celery``
    attribute or its only app), ``pkg`` (then ``pkg.celery``), or ``pkg.mod.attr``.

    The current directory is importable, as with ``celery -A``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    if attr:
        obj: object = _import(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigurationError(f"{module_name} has no attribute {attr!r}")
        if not isinstance(obj, Conveyor):
            raise ConfigurationError(f"{spec} is a {type(obj).__name__}, not a Conveyor app")
        return obj
    try:
        module = _import(module_name)
    except ConfigurationError:
        # "pkg.mod.attr" may name an attribute; if pkg.mod has none, the user meant a
        # module, and "no module named pkg.mod.attr" is the error that helps.
        parent, _, last = module_name.rpartition(".")
        try:
            has_attr = bool(parent) and hasattr(_import(parent), last)
        except ConfigurationError:
            has_attr = False
        if not has_attr:
            raise
        return find_app(f"{parent}:{last}")
    found = _find_in(module)
    if found is None and hasattr(module, "__path__"):
        try:
            found = _find_in(_import(f"{module_name}.celery"))
        except ConfigurationError:
            found = None
    if found is None:
        raise ConfigurationError(
            f"no conveyor app found in {module_name!r}; use -A {module_name}:ATTR"
        )
    return found
