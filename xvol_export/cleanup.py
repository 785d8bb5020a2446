"""Temporary files and folders that xvol makes, how they are named, and how they go away.

Every temporary path xvol makes carries its owner in its name, ``xvol-PID-HHHHHHSSSSSS.``: the process id,
then six hex digits of the host name's hash and six of the process's start time (from ``/proc`` on Linux,
so a reused process id is told apart). So:

- a run that ends, normally or by a caught signal, removes what it registered here (:func:`remove_live`);
- a run killed with SIGKILL leaves them, and a later run removes them (:func:`sweep`) once their owner is
  gone: a process of this host that no longer runs (or runs, but started at another time), or, for a path
  made on another host (a shared folder), once it is a day old.

The files are ``.NAME.xvol-….XXXX.tmp`` beside an output (:func:`temporary_file`), staging folders
``.NAME.xvol-….XXXX`` beside it (:func:`staging_folder`), and folders ``xvol-….XXXX`` in the temporary folder
(:func:`temporary_folder`, and the command's private $TMPDIR, :func:`private_tempdir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from xvol_export.limits import no_room_error, out_of_room

# a name: "xvol-" then pid, host hash and start hash, then "." and more
OWNER = re.compile(r"(?:^|\.)xvol-(\d+)-([0-9a-f]{6})([0-9a-f]{6})\.")
FOREIGN_AGE_S = 24 * 3600  # a path made on another host is stale once this old

_live: dict[Path, None] = {}  # paths this process made and still owns, oldest first
_swept: set[Path] = set()  # folders already swept in this run
_reporter: Callable[[list[Path]], None] | None = None
_log = logging.getLogger("xvol_export")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


_HOST = _digest(socket.gethostname())


def _start_time(pid: int) -> str | None:
    """The process's start time as the kernel gives it ('' where there is no /proc), None if none runs."""
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there: take any id as running
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux: no such process
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # it exists, another user's
        pass
    return ""


_tags: dict[int, str] = {}


def owner_tag(pid: int | None = None) -> str:
    """``xvol-PID-HHHHHHSSSSSS``: the mark of this process (or of process ``pid`` of this host) in the names
    of its temporary paths."""
    if pid is not None and pid != os.getpid():
        return f"xvol-{pid}-{_HOST}{_digest(_start_time(pid) or '')}"
    pid = os.getpid()  # looked up each time: a forked child has its own
    if pid not in _tags:
        _tags[pid] = f"xvol-{pid}-{_HOST}{_digest(_start_time(pid) or '')}"
    return _tags[pid]


def register(path: str | os.PathLike) -> Path:
    """Own ``path`` until :func:`release`: :func:`remove_live` removes it if the run ends first."""
    path = Path(path)
    _live[path] = None
    return path


def release(path: str | os.PathLike) -> None:
    _live.pop(Path(path), None)


def discard(path: str | os.PathLike) -> None:
    """Remove a file or folder, if it is still there, and release it."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        release(path)


def remove_live() -> None:
    """Remove every temporary path this process still owns, newest first (files before their folders)."""
    for path in reversed(list(_live)):
        discard(path)


def _create(folder: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    for _ in range(100):
        path = register(folder / f"{prefix}{owner_tag()}.{secrets.token_hex(4)}{suffix}")
        try:  # registered before it exists: a signal between the two cannot leave it unowned
            make(path)
            return path
        except FileExistsError:
            release(path)
        except BaseException:
            release(path)
            raise
    raise FileExistsError(f"no free temporary name in {folder}")


def _make_file(path: Path) -> None:
    # 0o666 less the umask: the permissions the output would get anyway (mkstemp makes files private)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))


def new_file(folder: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """Create an empty file ``PREFIXxvol-….XXXX SUFFIX`` in ``folder``, registered (see :func:`register`)."""
    return _create(Path(folder), prefix, suffix, _make_file)


def new_folder(folder: str | os.PathLike, prefix: str = "", suffix: str = "") -> Path:
    """Create a private folder ``PREFIXxvol-….XXXX SUFFIX`` in ``folder``, registered."""
    return _create(Path(folder), prefix, suffix, lambda path: path.mkdir(mode=0o700))


# The signals a run is stopped with (xvol_cli.interrupts handles them): their handlers' exceptions are kept
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def preserve_interrupts() -> Iterator[None]:
    """Keep a signal's exception through code that would swallow it, and raise it once the block ends.

    A writer in C++ that calls back into Python (``torch.save`` into a file object: its zip writer calls the file's
    ``write``) turns an exception raised in the callback into its own: the ``Interrupted`` (or KeyboardInterrupt)
    that a SIGINT, SIGTERM or SIGHUP handler raises there comes out as ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos``, an internal error instead of an interrupted run. While the block runs,
    each Python handler of those signals is called through a wrapper that notes the exception it raises; if the
    block then ends with another exception, or none, the handler's own is raised instead, so the run ends as an
    interrupted one (and what the block made unwinds with it). Handlers that raise nothing (they only note the
    signal) and SIG_DFL/SIG_IGN are left as they are; off the main thread (where no handler runs) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[BaseException] = []
    saved: dict[int, Callable] = {}

    def wrapper(signum, frame):
        try:
            saved[signum](signum, frame)
        except BaseException as err:
            if not raised:
                raised.append(err)
            raise

    failed: BaseException | None = None
    try:
        for signum in _STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                saved[signum] = handler
                signal.signal(signum, wrapper)
        yield
    except BaseException as err:
        failed = err
    finally:
        for signum, handler in saved.items():  # a signal now runs the wrapper or the handler: both raise
            if signal.getsignal(signum) is wrapper:
                signal.signal(signum, handler)
    if raised and failed is not raised[0]:
        raise raised[0]  # what the block turned it into (or that it went on) no longer matters
    if failed is not None:
        raise failed


@contextlib.contextmanager
def temporary_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """An empty file ``.NAME.xvol-….XXXX.tmp`` beside ``path``, removed on exit unless renamed away."""
    path = Path(path)
    tmp = None
    try:
        tmp = new_file(path.parent, f".{path.name}.", suffix)
        yield tmp
    finally:
        if tmp is not None:
            discard(tmp)


@contextlib.contextmanager
def temporary_folder(suffix: str = "") -> Iterator[Path]:
    """A folder ``xvol-….XXXX`` in the temporary folder (:func:`tempfile.gettempdir`), removed on exit.

    A file the block writes there that the file system will not take (no space left, the file-size limit, a
    quota; an exporter's scratch file) is an :class:`~xvol_export.errors.XvolError` naming the folder and the fix."""
    folder = None
    try:
        folder = new_folder(tempfile.gettempdir(), "", suffix)
        yield folder
    except Exception as err:
        room = out_of_room(err)
        if room is None or folder is None:
            raise
        written = _largest_file(folder)
        raise no_room_error(room, folder / (written[0] if written else "…"), None, written[1] if written else None,
                            "point TMPDIR at a folder on a disk with room", temporary=True) from None
    finally:
        if folder is not None:
            discard(folder)


def _largest_file(folder: Path) -> tuple[str, int] | None:
    """The name (relative to ``folder``) and size of the largest file under it: the one being written, most likely."""
    found = None
    for path in folder.rglob("*"):
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            continue
        if size >= 0 and (found is None or size > found[1]):
            found = (str(path.relative_to(folder)), size)
    return found


def staging_folder(path: str | os.PathLike) -> Path:
    """A hidden folder ``.NAME.xvol-….XXXX`` beside ``path``, for files renamed into place once checked;
    registered: remove it with :func:`discard`."""
    path = Path(path)
    return new_folder(path.parent, f".{path.name}.")


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """Where to write ``path`` (and its companion files) before they are checked: ``path``'s name in a
    :func:`staging_folder` beside it, so the checked files are renamed into place on the same file system.
    The folder is swept of dead runs' leftovers first and removed, with whatever was not renamed away, when
    the block ends (interrupted or not)."""
    path = Path(path)
    sweep(path.parent)
    folder = staging_folder(path)
    try:
        yield folder / path.name
    finally:
        discard(folder)


def _is_stale(path: Path, match: re.Match) -> bool:
    pid, host, started = int(match.group(1)), match.group(2), match.group(3)
    if path in _live:
        return False
    if host != _HOST:
        try:
            return time.time() - path.lstat().st_mtime > FOREIGN_AGE_S
        except OSError:
            return False
    if pid == os.getpid():
        return True  # this very process's, no longer owned: left over by an earlier run in this process
    now = _start_time(pid)
    return now is None or _digest(now) != started


def sweep(folder: str | os.PathLike, report: bool = True) -> list[Path]:
    """Remove the temporary paths of xvol runs that are gone from ``folder`` (once per run and folder);
    the reporter (:func:`set_reporter`) hears of what was removed."""
    folder = Path(folder)
    try:
        key = folder.resolve()
    except OSError:
        return []
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith((".", "xvol-")):
            continue
        match = OWNER.search(entry.name)
        path = Path(entry.path)
        if match and _is_stale(path, match):
            discard(path)
            if not os.path.lexists(path):
                removed.append(path)
    if removed and report:
        _report(removed)
    return removed


def _report(removed: list[Path]) -> None:
    if _reporter is not None:
        _reporter(removed)
    else:
        _log.warning(describe_removed(removed))


def describe_removed(removed: list[Path]) -> str:
    """One line: what was removed, and why."""
    count = len(removed)
    runs = len({m.group(1, 2, 3) for m in (OWNER.search(p.name) for p in removed) if m})
    first = os.fspath(removed[0])
    more = f" and {count - 1} more" if count > 1 else ""
    noun = "temporary file" if count == 1 else "temporary files"
    whose = "an xvol run that was killed" if runs <= 1 else f"{runs} xvol runs that were killed"
    return f"removed {count} {noun} left by {whose}: {first}{more}"


def set_reporter(reporter: Callable[[list[Path]], None] | None) -> Callable[[list[Path]], None] | None:
    """Who hears of stale files removed (default: the ``xvol_export`` logger); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def new_run() -> None:
    """A new command in this process: folders are swept again."""
    _swept.clear()


@contextlib.contextmanager
def private_tempdir() -> Iterator[Path | None]:
    """Point $TMPDIR and :mod:`tempfile` at a private folder ``xvol-….XXXX`` for the block, then remove it:
    whatever a library writes there (ONNX Runtime's telemetry session file, exporters' scratch files) goes
    with it. Stale folders of killed runs beside it are swept first. Yields None (and changes nothing) when
    the temporary folder cannot be written."""
    root = Path(tempfile.gettempdir())
    env_root = os.environ.get("TMPDIR")
    if env_root and os.path.isdir(env_root):
        root = Path(env_root)  # what C libraries will use; tempfile may have cached an older value
    sweep(root)
    try:
        private = new_folder(root)
    except OSError:
        private = None
    if private is None:
        yield None
        return
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    try:
        os.environ["TMPDIR"] = os.fspath(private)
        tempfile.tempdir = os.fspath(private)
        yield private
    finally:
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        tempfile.tempdir = saved_tempdir
        discard(private)
