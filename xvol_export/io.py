"""Atomic file writes and file hashes (temporary files are named and cleaned up by :mod:`xvol_export.cleanup`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from xvol_export import cleanup
from xvol_export.errors import XvolError

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
        resolved = path.resolve()
        if any(resolved == source.resolve() or _same_file(path, source) for source in sources):
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.xvol-PID-….XXXX.tmp``, with the usual permissions);
    on success rename it over ``path``, else remove it. Stale ones of killed runs in that folder go first."""
    path = check_output_path(path, force)
    cleanup.sweep(path.parent)
    with cleanup.temporary_file(path) as tmp:
        yield tmp
        os.replace(tmp, path)


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
    with atomic_write(path, force) as tmp:
        tmp.write_text(text)
