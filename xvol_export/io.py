"""Atomic file writes and file hashes (temporary files are named and cleaned up by :mod:`xvol_export.cleanup`).

Every output goes through :func:`atomic_write`, which is also where a write that the file system refuses (a full
disk, the file-size limit, a quota) becomes one :class:`XvolError` naming the file and the room it needs, and where a
signal's exception that a writer in C++ swallowed is raised again (:func:`xvol_export.cleanup.preserve_interrupts`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from xvol_export import cleanup
from xvol_export.errors import XvolError
from xvol_export.limits import no_room_error, out_of_room

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")  # the files xvol reads as checkpoints


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output path whose folder is missing, or that exists without ``force``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise XvolError(
            f"{path}: the folder '{path.parent}' does not exist. Create it first or choose another output path."
        )
    if path.is_dir():
        raise XvolError(f"{path}: is a folder. Give a file name for the output.")
    if path.exists() and not force:
        raise XvolError(f"{path}: already exists. Pass --force to overwrite it, or choose another output path.")
    return path


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: list[str | os.PathLike | None],
                  force: bool = False) -> None:
    """Before any work: every output (``{option: path}``) can be written, none is one of ``inputs``
    (not even with ``force``: the output would replace what it is made from), and no two name one file.
    :class:`XvolError` names the option and the file."""
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    sources = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for option, path in given.items():
        resolved = _resolve(path)
        if any(resolved == _resolve(source) or _same_file(path, source) for source in sources):
            raise XvolError(f"{path}: {option} names a file this command reads. Choose another output path "
                            "(--force never replaces an input).")
        if resolved in seen:
            raise XvolError(f"{path}: {seen[resolved]} and {option} name the same file. Give each output its own "
                            "path.")
        seen[resolved] = option
        check_output_path(path, force)
        _check_writable(path)
    for path in given.values():  # temporary files that killed runs left beside these outputs
        cleanup.sweep(path.parent)


def _check_writable(path: Path) -> None:
    """Create and remove a file beside ``path``: permissions alone do not say (root, read-only mounts, /proc)."""
    try:
        probe = cleanup.new_file(path.parent, f".{path.name}.", ".probe")
    except OSError as err:
        raise XvolError(f"{path}: cannot write in the folder '{path.parent}' ({err.strerror or err}). Choose another "
                        "output path.") from None
    cleanup.discard(probe)


def _resolve(path: Path) -> Path:
    """``path`` made absolute with its links followed; a loop of links stays as it is (its reader refuses it)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: a symlink loop, before Python 3.13
        return path.absolute()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, force: bool = False, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.xvol-PID-….XXXX.tmp``, with the usual permissions);
    on success rename it over ``path``, else remove it. Stale ones of killed runs in that folder go first.

    A file system that will not take the file (no space left, the file-size limit, a quota: whatever the block
    raises, or a writer's error that names one) is an :class:`XvolError` naming ``path``, the room it needs (``size``
    bytes, where the caller knows it) and what to do. A signal's exception that code in the block swallowed (a
    writer in C++) is raised once the block ends (:func:`~xvol_export.cleanup.preserve_interrupts`).
    """
    path = check_output_path(path, force)
    cleanup.sweep(path.parent)
    with cleanup.temporary_file(path) as tmp:
        try:
            with cleanup.preserve_interrupts():
                yield tmp
            os.replace(tmp, path)
        except Exception as err:
            room = out_of_room(err)
            if room is None:
                raise
            raise no_room_error(room, path, size, _size_of(tmp)) from None


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class _KeptWriteErrors:
    """A binary file for a writer in C++ that calls its ``write`` (``torch.save``'s zip writer): such a writer turns
    the OSError of a failed write into its own RuntimeError (``unexpected pos``); this file keeps it (``error``)."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@contextlib.contextmanager
def open_for_native_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for writing by a writer in C++ (``torch.save(obj, handle)``): when a write fails (a full disk,
    the file-size limit) and the writer raises its own error instead, the write's OSError is raised, so that
    :func:`atomic_write` can say what happened."""
    with open(path, "wb") as handle:
        kept = _KeptWriteErrors(handle)
        try:
            yield kept  # type: ignore[misc] - a file object in all that writers use
        except Exception as err:
            if kept.error is not None and err is not kept.error:
                raise kept.error from None
            raise


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_timestamp() -> str:
    """Now (UTC, to the second), or ``$SOURCE_DATE_EPOCH`` where set, so that reproducible builds write the same
    bytes twice."""
    import datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    moment = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch.isdigit()
              else datetime.datetime.now(datetime.timezone.utc))
    return moment.isoformat(timespec="seconds")


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> None:
    """Write a text file (a Markdown summary) atomically."""
    with atomic_write(path, force, size=len(text.encode())) as tmp:
        tmp.write_text(text)
