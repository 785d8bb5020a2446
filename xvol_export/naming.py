"""How a message names a caller's setting.

The library speaks to Python callers: ``use_ema=True``, ``model='pkg.mod:net'``. A front end that takes the same
settings under its own names (the command line's ``--ema``, ``--model pkg.mod:net``) runs the library inside
:func:`named_as`, and every message made meanwhile uses those names instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

_FRONT_END: ContextVar[Mapping[str, str] | None] = ContextVar("xvol_setting_names", default=None)


def setting(name: str) -> str:
    """The setting ``name`` (a Python parameter), as the caller knows it."""
    names = _FRONT_END.get()
    return names.get(name, name) if names is not None else name


def assignment(name: str, value: object) -> str:
    """The setting ``name`` given ``value``: ``model='x'`` and ``use_ema=True`` in Python; a front end's
    ``--model x``, and its switch alone (``--ema``) for ``True``."""
    names = _FRONT_END.get()
    if names is None or name not in names:
        return f"{name}={value!r}"
    return names[name] if value is True else f"{names[name]} {value}"


@contextmanager
def named_as(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, messages name each setting of ``names`` (parameter -> front-end name) by its value."""
    token = _FRONT_END.set(dict(names))
    try:
        yield
    finally:
        _FRONT_END.reset(token)
