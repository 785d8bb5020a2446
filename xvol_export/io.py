"""Atomic file writes and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from xvol_export.errors import XvolError


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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else remove it."""
    path = check_output_path(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
