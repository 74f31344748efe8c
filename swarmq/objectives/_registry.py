"""A strict registry of utilities, keyed by name.

Unlike registries that silently overwrite (a second plug-in with the same name would replace the
first one without a word), registering a name twice is an error: a search's recorded utility name
must always mean the same code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from swarmq.errors import UtilityError
from swarmq.objectives._base import Utility
from swarmq.objectives._plugins import import_object, is_plugin_spec, parse_spec

if TYPE_CHECKING:
    from swarmq.config import ObjectiveConfig

__all__ = [
    "available_utilities",
    "build_utility",
    "get_utility",
    "load_plugin_utility",
    "register_utility",
    "utility_from_config",
]

_REGISTRY: dict[str, type[Utility]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

U = TypeVar("U", bound=type[Utility])


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_utility(name: str) -> Callable[[U], U]:
    """Class decorator: register a :class:`Utility` subclass under ``name`` and set ``cls.name``.

    Raises :class:`UtilityError` when ``name`` is already taken by another class, when it is not a
    lower-case identifier, or when the class is not a concrete :class:`Utility`.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise UtilityError(
            f"utility name {name!r} is not valid: use lower-case letters, digits and '_', "
            "starting with a letter"
        )

    def decorator(cls: U) -> U:
        if not (isinstance(cls, type) and issubclass(cls, Utility)):
            raise UtilityError(
                f"@register_utility({name!r}) must decorate a Utility subclass, got {cls!r}"
            )
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise UtilityError(
                f"utility name {name!r} is already registered by {_qualname(existing)}; "
                f"cannot register {_qualname(cls)} under the same name"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_utilities() -> list[str]:
    """The registered utility names, sorted."""
    return sorted(_REGISTRY)


def get_utility(name: str) -> type[Utility]:
    """The utility class registered as ``name``; unknown names raise :class:`UtilityError`.

    ``name`` may also be a plug-in spec, ``path/to/file.py:ClassName`` or
    ``package.module:ClassName``: the file or module is imported (once per process) and the
    class returned, registered under its own name (see :func:`load_plugin_utility`).
    """
    if isinstance(name, str) and is_plugin_spec(name):
        return load_plugin_utility(name)
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        names = ", ".join(available_utilities()) or "(none)"
        raise UtilityError(
            f"unknown utility {name!r}; available utilities: {names}; or name your own "
            "utility class as 'path/to/file.py:ClassName'"
        ) from None


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def load_plugin_utility(spec_text: str) -> type[Utility]:
    """Import a user's utility class from ``path/to/file.py:ClassName`` (or ``module:Class``).

    The class must be a concrete :class:`Utility` subclass. If the file registered it with
    :func:`register_utility`, that name is kept; otherwise it is registered here under its own
    ``name`` attribute when the class sets one, else under its class name in snake case
    (``MyUtility`` -> ``my_utility``). Raises :class:`UtilityError` naming the spec for a missing
    file, an import failure, a missing class, an object that is not a concrete Utility subclass,
    or a name already registered by another class.
    """
    spec = parse_spec(spec_text, "utility", "'path/to/file.py:ClassName' or 'module:ClassName'")
    obj = import_object(spec, "utility plug-in")
    if not (isinstance(obj, type) and issubclass(obj, Utility)):
        kind = f"the class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        raise UtilityError(
            f"utility plug-in {spec_text!r}: {spec.attribute!r} is {kind}, not a subclass of "
            "swarmq.objectives.Utility"
        )
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise UtilityError(
            f"utility plug-in {spec_text!r}: {obj.__name__} does not implement {missing}"
        )
    if obj.name and _REGISTRY.get(obj.name) is obj:
        return obj
    # A name inherited from a registered parent class is not this class's own name.
    own = vars(obj).get("name") or ""
    name = own if isinstance(own, str) and own else _snake(obj.__name__)
    try:
        return register_utility(name)(obj)
    except UtilityError as err:
        raise UtilityError(f"utility plug-in {spec_text!r}: {err}") from None


def build_utility(
    name: str, options: Mapping[str, Any] | None = None, *, max_new_tokens: int | None = None
) -> Utility:
    """Instantiate a registered utility with validated options.

    ``max_new_tokens`` (the ``[objective] max_new_tokens`` field) overrides the utility's default
    generation length. Setting it both there and in ``options`` to different values is refused
    rather than resolved silently, and so is setting it for a utility without that option.
    """
    cls = get_utility(name)
    merged = dict(options or {})
    if max_new_tokens is not None:
        if "max_new_tokens" not in cls.Options.model_fields:
            raise UtilityError(
                f"utility {name!r} does not generate with a max_new_tokens option; "
                "remove [objective] max_new_tokens"
            )
        given = merged.get("max_new_tokens")
        if given is not None and given != max_new_tokens:
            raise UtilityError(
                f"max_new_tokens is set twice with different values: [objective] max_new_tokens = "
                f"{max_new_tokens} and [objective.options] max_new_tokens = {given!r}; keep one"
            )
        merged["max_new_tokens"] = max_new_tokens
    return cls(merged)


def utility_from_config(objective: ObjectiveConfig) -> Utility:
    """:func:`build_utility` from an ``[objective]`` table."""
    return build_utility(
        objective.utility, objective.options, max_new_tokens=objective.max_new_tokens
    )
