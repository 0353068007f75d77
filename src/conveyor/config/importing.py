"""``import_object``: a module or an attribute of one, named by a dotted path."""

from __future__ import annotations

import importlib
import re

from conveyor.exceptions import ConfigurationError

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_object(path: str) -> object:
    """Import ``"pkg.mod"``, ``"pkg.mod:attr"`` or ``"pkg.mod.attr"`` and return it.

    Raises:
        ConfigurationError: the path is malformed, the module cannot be imported,
            or it has no such attribute.
    """
    module_name, colon, attribute = path.partition(":")
    if not _DOTTED.fullmatch(module_name) or (colon and not _DOTTED.fullmatch(attribute)):
        raise ConfigurationError(
            f"cannot import {path!r}: expected 'pkg.module', 'pkg.module:attr' or 'pkg.module.attr'"
        )
    if not colon:
        try:
            return importlib.import_module(module_name)
        except ImportError as exc:
            # Only "pkg.mod.attr" itself missing means: try it as attribute attr of pkg.mod.
            missing_itself = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
            if not missing_itself or "." not in module_name:
                raise ConfigurationError(f"cannot import {path!r}: {exc}") from exc
        module_name, _, attribute = module_name.rpartition(".")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {path!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"cannot import {path!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj
