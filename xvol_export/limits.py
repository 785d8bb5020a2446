"""What a request may cost, checked before any of it is spent: memory, seeds, file kinds and file names.

Everything a user can give (a config, a shape, a batch, a data file, a seed, an output name) is
checked here against what this machine and its file system can hold, so that a request that
cannot work is refused with the estimate and the fix (:class:`XvolError`, exit 2), instead of
swapping, hanging on a pipe, or failing deep inside PyTorch, numpy or ONNX Runtime.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

from xvol_export.errors import XvolError

# numpy's generators take seeds of 0 .. 2**32 - 1 (the widest range every seeded part of xvol accepts)
MAX_SEED = 2**32 - 1
# Without a reading from the file system (pathconf), the usual limits of Linux, macOS and Windows file systems.
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096
# An output is first written as a temporary file beside it, named after it (io.atomic_write and its write probe:
# ``.NAME.xvol-PID-HOSTSTART.XXXXXXXX.probe``, 42 bytes more with a 7-digit PID): that name must fit too.
TEMPORARY_NAME_ROOM = 42
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_memory() -> int:
    """Bytes this process can still allocate without swapping: ``MemAvailable`` of ``/proc/meminfo`` (else
    ``os.sysconf``), and no more than what a container's cgroup limit leaves."""
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    limit = _cgroup_room()
    if found is None:
        return limit if limit is not None else 2**63 - 1  # nothing known: let the allocator decide
    return min(found, limit) if limit is not None else found


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
    return None


def format_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``; absurd sizes stay readable (``3.6e+15 GiB`` is still a number)."""
    if not math.isfinite(count):
        return "an unbounded amount"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} PiB"  # pragma: no cover - the loop returns


def check_fits(bytes_needed: float, what: str, fix: str = "") -> None:
    """:class:`XvolError` when ``what`` needs more than the memory available now, with both figures.

    ``bytes_needed`` is an estimate made before anything is allocated (it may be a float: a product of
    absurd sizes does not overflow); ``fix`` says what to change.
    """
    if bytes_needed < 0:
        raise ValueError(f"bytes_needed must be >= 0, got {bytes_needed}")
    available = available_memory()
    if bytes_needed <= available:
        return
    raise XvolError(f"{what} needs about {format_bytes(bytes_needed)} of memory, more than the "
                    f"{format_bytes(available)} available on this machine. {fix or 'Ask for less.'}".rstrip())


def check_seed(seed, option: str = "--seed") -> int:
    """A seed numpy and PyTorch both take: an integer from 0 to 2**32 - 1; :class:`XvolError` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise XvolError(f"{option} must be an integer from 0 to {MAX_SEED} (2**32 - 1, numpy's range), got {seed!r}.")
    return seed


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse, before opening it, an input that is not a regular file: a named pipe (FIFO) or a device would
    block or never end, a socket cannot be read. A missing path passes (its reader says so in its words)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise XvolError(f"{_short(path)}: cannot be read ({err.strerror or err}). "
                        f"{_name_fix(err)}Check the path.") from None
    kind = _special_kind(mode)
    if kind:
        article = "an" if what[:1].lower() in "aeio." else "a"
        raise XvolError(f"{path}: is {kind}, not a regular file: xvol reads {article} {what} whole, and reading "
                        f"{kind} can block for ever or never end. Copy the data into a file and give that file.")
    return path


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return ""


def check_output_name(path: str | os.PathLike, option: str = "--output", default: bool = False) -> Path:
    """Refuse an output path the file system cannot hold: a name longer than its ``NAME_MAX`` bytes (255 on
    most), or a path longer than ``PATH_MAX``. ``default`` says that xvol made the name from the input's."""
    text = os.fspath(path)
    target = Path(text)
    name_max = _pathconf(target.parent, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    limit = name_max - TEMPORARY_NAME_ROOM
    size = len(os.fsencode(target.name))
    fix = (f"Give a shorter output name with {option}." if default else "Choose a shorter name.")
    made = f"the output name xvol makes from the input's ({option} not given)" if default else option
    if size > limit:
        raise XvolError(f"{_short(target)}: {made} is {size} bytes long, more than the {limit} bytes an output name "
                        f"may have here (file names may have {name_max} bytes on this file system, and xvol first "
                        f"writes a temporary file named after the output). {fix}")
    path_limit = _pathconf(target.parent, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    if len(os.fsencode(os.path.abspath(text))) >= path_limit:
        raise XvolError(f"{_short(target)}: {made} makes a path longer than the {path_limit} bytes this system "
                        f"allows. {fix}")
    return target


def check_not_folder_syntax(path: str | os.PathLike, option: str = "--output") -> None:
    """Refuse an output written as a folder (``newdir/``, ``out/.``): a file named after the folder would be
    written in its place. Only a ``str`` keeps the trailing separator (``pathlib`` drops it)."""
    if not isinstance(path, str):
        return
    separators = (os.sep,) + ((os.altsep,) if os.altsep else ())
    last = path.replace(os.altsep, os.sep).rsplit(os.sep, 1)[-1] if os.altsep else path.rsplit(os.sep, 1)[-1]
    if path.endswith(separators) or last in ("", ".", ".."):
        folder = path.rstrip("".join(separators)) or "."
        raise XvolError(f"{path}: {option} names a folder (it ends with a path separator, '.' or '..'), not a file: a "
                        f"file named after the folder would be written. Give a file name, e.g. {option} "
                        f"{folder}/model.deploy.pth.")


def _pathconf(folder: Path, name: str, default: int) -> int:
    probe = folder
    for _ in range(64):  # the nearest existing folder answers for the file system
        try:
            return int(os.pathconf(probe if str(probe) else ".", name))
        except (OSError, ValueError, AttributeError):
            if probe.parent == probe:
                break
            probe = probe.parent
    return default


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}"


def _name_fix(err: OSError) -> str:
    return "The name is longer than this file system allows. " if err.errno == errno.ENAMETOOLONG else ""


def tensor_bytes(shape, itemsize: int) -> float:
    """Bytes of a dense tensor of ``shape``, as a float (an absurd shape is a large number, not an overflow)."""
    return float(math.prod(float(d) for d in shape)) * itemsize


__all__ = ["MAX_SEED", "available_memory", "check_fits", "check_input_file", "check_not_folder_syntax",
           "check_output_name", "check_seed", "format_bytes", "tensor_bytes"]
