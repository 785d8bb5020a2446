"""SIGINT, SIGTERM and SIGHUP in the ``xvol`` command: exit 128+N with one line, ``interrupted (SIGTERM)``.

Standard library only: :func:`early` runs before the heavy imports (torch, ONNX) when this process is the
``xvol`` command. The handlers go through four modes:

- ``early``: while modules import, nothing has been written yet: say so and exit at once.
- ``catch`` (:func:`catch`, in ``main()``): the first signal raises :class:`Interrupted`, which unwinds
  through every ``finally`` and context manager, so temporary files go with it. It is a
  :class:`BaseException`, as KeyboardInterrupt is, so ``except Exception`` does not swallow it, and it is no
  KeyboardInterrupt, which Click and Typer turn into a plain exit code. A second signal while that unwinds
  (or if something swallowed it) runs the cleanup callback in the handler and exits at once.
- ``shield`` (:func:`shield`, while ``main()`` cleans up): a signal is only remembered (:func:`pending`).
- after :func:`release`: the ``xvol`` process exits at once on a signal (``main()`` is done and clean); a
  caller of ``main()`` in its own process (the tests) gets its own handlers back.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

NAMES = ("SIGINT", "SIGTERM", "SIGHUP")
SIGNALS = tuple(getattr(signal, name) for name in NAMES if hasattr(signal, name))  # no SIGHUP on Windows


class Interrupted(BaseException):
    """A signal asked this run to stop; ``exit_code`` is 128 + the signal's number, the shell's convention."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return _name(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted ({self.name})"


_state: dict = {"mode": None, "process": False, "saved": None, "pending": None, "raised": False,
                "cleanup": None}


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _say_and_exit(signum: int) -> None:
    try:
        os.write(2, f"interrupted ({_name(signum)})\n".encode())
    finally:
        os._exit(128 + signum)


def _handler(signum, frame) -> None:  # noqa: ARG001 - the signal module's signature
    mode = _state["mode"]
    if mode == "shield":
        _state["pending"] = _state["pending"] or signum
        return
    if mode == "catch" and not _state["raised"]:
        _state["raised"] = True
        raise Interrupted(signum)
    if mode == "catch":  # a second signal: the first is unwinding, or was swallowed; stop now, cleanly
        callback = _state["cleanup"]
        try:
            if callback is not None:
                callback()
        finally:
            _say_and_exit(signum)
    _say_and_exit(signum)  # early, or released in the xvol process


def _install() -> dict | None:
    """Point the three signals at :func:`_handler`; returns the handlers they had (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    saved = {}
    for signum in SIGNALS:
        saved[signum] = signal.getsignal(signum)
        signal.signal(signum, _handler)
    return saved


def early() -> None:
    """This process is the ``xvol`` command: a signal during the imports ends it at once, with its one line.
    ONNX Runtime's telemetry (1DS, on Linux since 1.2x) writes a ``.ses`` file in $TMPDIR on first use;
    ``ORT_DISABLE_TELEMETRY=1`` before it loads stops that (a user's own setting is kept)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if _state["mode"] is None and _install() is not None:
        _state.update(mode="early", process=True)


def catch(cleanup: Callable[[], None] | None = None) -> None:
    """From now on the first signal raises :class:`Interrupted`; ``cleanup`` runs on a second one before exit."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    saved = _install()
    if saved is None:
        return
    if _state["saved"] is None and not _state["process"]:
        _state["saved"] = saved  # a caller's own handlers, given back by release()
    _state.update(mode="catch", pending=None, raised=False, cleanup=cleanup)


def shield() -> None:
    """Signals are remembered, not raised: the run is cleaning up."""
    if _state["mode"] == "catch":
        _state["mode"] = "shield"


def pending() -> Interrupted | None:
    """The first signal that came while shielded, if any."""
    signum = _state["pending"]
    return Interrupted(signum) if signum else None


def release() -> None:
    """``main()`` is done: the ``xvol`` process exits at once on a signal; another caller gets its handlers back."""
    if _state["mode"] not in ("catch", "shield"):
        return
    _state.update(cleanup=None, raised=False, pending=None)
    if _state["process"]:
        _state["mode"] = "early"
        return
    saved, _state["saved"] = _state["saved"], None
    _state["mode"] = None
    if saved and threading.current_thread() is threading.main_thread():
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def is_xvol_command(argv0: str | None = None) -> bool:
    """Whether this process was started as the ``xvol`` console script, or as ``python -m xvol_export`` (whose
    ``__main__`` calls :func:`early` itself, before the commands import torch)."""
    argv0 = os.path.normcase(sys.argv[0] if argv0 is None else argv0 or "")
    if os.path.basename(argv0).removesuffix(".exe") == "xvol":
        return True
    return argv0.endswith(os.path.normcase(os.path.join("xvol_export", "__main__.py")))
