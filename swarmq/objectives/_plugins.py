"""Importing user code named by a ``TARGET:NAME`` spec (a utility class, a reward scorer).

``TARGET`` is either a Python file (``path/to/file.py``) or an importable module
(``package.module``); ``NAME`` is an attribute of it. A file is imported once per process under a
module name derived from its resolved path, so asking for it again (every evaluation builds its
utility from the configuration) returns the same objects instead of re-running the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from swarmq.errors import UtilityError

__all__ = ["PluginSpec", "import_object", "is_plugin_spec", "parse_spec"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LOCK = threading.RLock()


@dataclass(frozen=True)
class PluginSpec:
    """A parsed ``TARGET:NAME`` spec."""

    text: str
    target: str
    attribute: str

    @property
    def is_file(self) -> bool:
        """Whether ``target`` names a ``.py`` file rather than a module."""
        return self.target.endswith(".py")


def is_plugin_spec(text: str) -> bool:
    """Whether ``text`` has the ``TARGET:NAME`` form (a registered name never has a colon)."""
    return ":" in text


def parse_spec(text: str, what: str, form: str) -> PluginSpec:
    """Split ``TARGET:NAME``; ``what`` and ``form`` name the setting and its shape in errors."""
    target, sep, attribute = text.rpartition(":")
    if not sep or not target or not _IDENT.match(attribute):
        raise UtilityError(
            f"{what} {text!r} is not of the form {form}: a Python file (ending in .py) or an "
            "importable module, a colon, and the name defined there"
        )
    spec = PluginSpec(text, target, attribute)
    if not spec.is_file and not _MODULE.match(target):
        raise UtilityError(
            f"{what} {text!r}: {target!r} is neither a .py file nor a dotted module name"
        )
    return spec


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"swarmq_plugin_{stem}_{digest}"


def _import_file(path: Path, what: str, text: str) -> ModuleType:
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        where = "is a directory" if resolved.is_dir() else "does not exist"
        raise UtilityError(f"{what} {text!r}: the file {str(resolved)!r} {where}")
    name = _module_name(resolved)
    with _LOCK:
        module = sys.modules.get(name)
        if module is not None:
            return module
        loader_spec = importlib.util.spec_from_file_location(name, resolved)
        if loader_spec is None or loader_spec.loader is None:
            raise UtilityError(f"{what} {text!r}: {str(resolved)!r} cannot be imported")
        module = importlib.util.module_from_spec(loader_spec)
        # Registered before running, as importlib does: dataclasses and pydantic models in the
        # file look their module up in sys.modules while the file runs.
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as err:
            del sys.modules[name]
            if isinstance(err, UtilityError):  # e.g. a name clash in @register_utility
                raise UtilityError(f"{what} {text!r}: {err}") from None
            if not isinstance(err, Exception):
                raise
            raise UtilityError(
                f"{what} {text!r}: importing {str(resolved)!r} failed: {type(err).__name__}: {err}"
            ) from err
        return module


def _import_module(target: str, what: str, text: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except UtilityError as err:
        raise UtilityError(f"{what} {text!r}: {err}") from None
    except ModuleNotFoundError as err:
        raise UtilityError(
            f"{what} {text!r}: no module named {err.name!r} can be imported (for a file, give "
            "its path ending in .py)"
        ) from None
    except Exception as err:
        raise UtilityError(
            f"{what} {text!r}: importing module {target!r} failed: {type(err).__name__}: {err}"
        ) from err


def import_object(spec: PluginSpec, what: str) -> Any:
    """The object ``spec.attribute`` of the file or module ``spec.target``.

    Raises :class:`UtilityError` for a missing file, a file or module that fails to import
    (with the original error), or a missing attribute (listing the public names it has).
    """
    if spec.is_file:
        module = _import_file(Path(spec.target), what, spec.text)
    else:
        module = _import_module(spec.target, what, spec.text)
    if not hasattr(module, spec.attribute):
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise UtilityError(
            f"{what} {spec.text!r}: {spec.target!r} defines no {spec.attribute!r} "
            f"(it defines: {shown or 'nothing public'})"
        )
    return getattr(module, spec.attribute)
