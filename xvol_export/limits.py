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
import re
import shutil
import stat
from dataclasses import dataclass
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
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where the cgroup file systems are mounted
PROC_CGROUP = Path("/proc/self/cgroup")  # which cgroup this process is in
PROC_STATUS = Path("/proc/self/status")  # VmSize: what this process maps now
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (v2 writes "max")


@dataclass(frozen=True)
class MemoryRoom:
    """How many bytes this process can still allocate, the limit that sets it, in words that follow "more than the
    3 GiB" (``available on this machine``, ``left under this process's address-space limit (...)``), and how to
    lift that limit."""

    bytes: int
    limit: str = "available on this machine"
    remedy: str = ""  # how to lift the limit, a sentence


def memory_room() -> MemoryRoom:
    """The smallest of what bounds an allocation now: the machine's available memory (``MemAvailable`` of
    ``/proc/meminfo``, else ``os.sysconf``), what the cgroup limits of this process's cgroup and its parents leave
    (v2 ``memory.max`` less ``memory.current``, v1 ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``, the
    reclaimable file cache not counted as used), and what the address-space limit (``ulimit -v``, RLIMIT_AS)
    leaves beyond what this process maps already. Nothing known: a huge number (the allocator decides)."""
    rooms = [room for room in (_machine_room(), _cgroup_room(), _address_space_room()) if room is not None]
    if not rooms:
        return MemoryRoom(2**63 - 1)
    return min(rooms, key=lambda room: room.bytes)


def available_memory() -> int:
    """Bytes this process can still allocate without swapping or failing: :func:`memory_room`'s figure."""
    return memory_room().bytes


def _machine_room() -> MemoryRoom | None:
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return MemoryRoom(found)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# cgroup v2 and v1: (the hierarchy's folder under CGROUP_ROOT, its name in /proc/self/cgroup, the limit file, the usage
# file, memory.stat's line of reclaimable file cache, the limit in words)
_CGROUP_KINDS = (("", "", "memory.max", "memory.current", "inactive_file", "cgroup v2 memory.max"),
                 ("memory", "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file",
                  "cgroup v1 memory.limit_in_bytes"))


def _cgroup_room() -> MemoryRoom | None:
    """What the tightest cgroup memory limit on this process leaves: its own cgroup's and each parent's (a limit
    binds the whole group), as far as they are visible under :data:`CGROUP_ROOT`; in a container that sees only
    its own cgroup, that one (the mount's root). Reclaimable file cache is not counted as used."""
    own = _own_cgroups()
    found = None
    for hierarchy, name, limit_file, usage_file, cache_key, words in _CGROUP_KINDS:
        base = CGROUP_ROOT / hierarchy if hierarchy else CGROUP_ROOT
        relative = Path(own.get(name, "/").strip("/") or ".")
        for folder in dict.fromkeys([base / relative, *(base / p for p in relative.parents)]):  # own, parents, root
            try:
                limit_text = (folder / limit_file).read_text().strip()
                usage = int((folder / usage_file).read_text().strip())
            except (OSError, ValueError):
                continue
            if not limit_text.isdigit() or int(limit_text) >= _NO_LIMIT:  # "max" or a huge number: no limit
                continue
            limit = int(limit_text)
            used = max(0, usage - _memory_stat(folder / "memory.stat", cache_key))
            room = MemoryRoom(max(0, limit - used), f"left under this process's cgroup memory limit ({words}: "
                              f"{format_bytes(limit)}, {format_bytes(used)} of it in use)",
                              "Or run it with a higher memory limit (the container's or the CI job's).")
            if found is None or room.bytes < found.bytes:
                found = room
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup in each hierarchy: ``{"": "/user.slice/x.scope", "memory": "/docker/abc"}`` from
    lines ``0::/user.slice/x.scope`` (v2) and ``4:memory:/docker/abc`` (v1)."""
    found: dict[str, str] = {}
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found[""] = parts[2]
        elif "memory" in parts[1].split(","):
            found["memory"] = parts[2]
    return found


def _memory_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _address_space_room() -> MemoryRoom | None:
    """What the address-space limit (``ulimit -v``, RLIMIT_AS) leaves beyond what this process maps now."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    try:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (OSError, ValueError, AttributeError):
        return None
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    mapped = _mapped_bytes()
    return MemoryRoom(max(0, limit - mapped), f"left under this process's address-space limit (ulimit -v, "
                      f"RLIMIT_AS: {format_bytes(limit)}, of which {format_bytes(mapped)} is mapped already)",
                      "Or raise the limit (ulimit -v) where you start xvol.")


def _mapped_bytes() -> int:
    """This process's virtual size now (``VmSize`` of ``/proc/self/status``; 0 where there is none to read)."""
    try:
        with open(PROC_STATUS) as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


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
    room = memory_room()
    if bytes_needed <= room.bytes:
        return
    raise XvolError(f"{what} needs about {format_bytes(bytes_needed)} of memory, more than the "
                    f"{format_bytes(room.bytes)} {room.limit}. {fix or 'Ask for less.'} {room.remedy}".rstrip())


# A file that cannot grow: no space left, over the file-size limit (or the file system's largest file), over a quota
ROOM_ERRNOS = frozenset(code for code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if code)
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) print an errno


def out_of_room(err: BaseException | None) -> OSError | None:
    """The error behind ``err`` that says a file could not grow (:data:`ROOM_ERRNOS`): ``err`` itself, its cause or
    context, or an errno that a writer in Rust names in its message (``I/O error: File too large (os error 27)``);
    None when there is none."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in ROOM_ERRNOS:
            return err
        match = _RUST_OS_ERROR.search(str(err))
        if match and int(match.group(1)) in ROOM_ERRNOS:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        err = err.__cause__ or err.__context__
    return None


def no_room_error(err: OSError, path: str | os.PathLike, needed: int | None = None, written: int | None = None,
                  elsewhere: str = "write it to a folder on another disk (-o)", temporary: bool = False) -> XvolError:
    """The :class:`XvolError` for a file that could not be written because the file system would not take it
    (``err``, one of :data:`ROOM_ERRNOS`): names the file, the room it needs (``needed`` bytes where known, else
    more than the ``written`` bytes it had when the write failed), the limit that stopped it and what to do;
    ``elsewhere`` says how to write it to another place; ``temporary``: a scratch file of the run, not an output."""
    path = Path(path)
    folder = path.parent
    name = f"{path} (a temporary file of this run)" if temporary else str(path)
    if needed:
        size = f"it needs about {format_bytes(needed)}"
    elif written:
        size = f"it needs more than the {format_bytes(written)} written when the write failed"
    else:
        size = "it needs more room"
    if err.errno == errno.EFBIG:
        limit = _file_size_limit()
        if limit is not None:
            return XvolError(f"{name}: cannot be written: {size}, more than this process may write to one file "
                             f"(its file-size limit, ulimit -f, RLIMIT_FSIZE, is {format_bytes(limit)}). Raise the "
                             "limit (ulimit -f unlimited) where you start xvol, or ask for a smaller output.")
        return XvolError(f"{name}: cannot be written: {size}, more than the file system of '{folder}' holds in one "
                         f"file. {elsewhere[:1].upper()}{elsewhere[1:]}, on a file system without that limit.")
    free = _free_bytes(folder)
    free_text = f"{format_bytes(free)} free in '{folder}'" if free is not None else f"in '{folder}'"
    if err.errno == getattr(errno, "EDQUOT", None):
        return XvolError(f"{name}: cannot be written: your disk quota is used up ({free_text}; {size}). Free space "
                         f"within your quota, or {elsewhere}.")
    return XvolError(f"{name}: cannot be written: the disk is full ({free_text}; {size}). Free space there, or "
                     f"{elsewhere}.")


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    try:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (OSError, ValueError, AttributeError):
        return None
    return None if limit == resource.RLIM_INFINITY or limit < 0 else limit


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


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
        if err.errno == errno.ELOOP:
            raise XvolError(f"{_short(path)}: is a loop of symbolic links (each link leads to another and none to a "
                            f"file), so there is no {what} to read. Give the path of the file itself, or fix the "
                            "links.") from None
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


__all__ = ["MAX_SEED", "MemoryRoom", "available_memory", "check_fits", "check_input_file", "check_not_folder_syntax",
           "check_output_name", "check_seed", "format_bytes", "memory_room", "no_room_error", "out_of_room",
           "tensor_bytes"]
