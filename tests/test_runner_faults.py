"""A runner's limits and faults (issue 17, item 4): a file-size limit or a full disk while an output is written, and
a memory limit below the machine's (``ulimit -v``, a cgroup), end in exit 2 with the file or the limit named and
what to do, never in an internal error, and leave nothing behind.

The limits are real: each run is an ``xvol`` process under ``resource.setrlimit`` (SIGXFSZ ignored, so that a write
past the file-size limit fails with EFBIG instead of killing the process).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xvol_export import create_model, limits
from xvol_export.checkpoint import save_checkpoint
from xvol_export.errors import XvolError
from xvol_export.io import atomic_write
from xvol_export.jsonio import write_json

from helpers import ANSI, randomize_bn

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
FILE_SIZE_LIMIT = 3000  # bytes: more than any file xvol must write before its output, less than any output here

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resource limits and /proc as on Linux")

# ``xvol ARGS`` with a file-size limit, set by the child before it imports xvol, and SIGXFSZ ignored
_FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from xvol_cli.main import main
main(sys.argv[2:])
"""

# ``xvol ARGS`` with an address-space limit of what it maps once PyTorch is loaded plus argv[1] bytes (a limit
# given before the imports would depend on the size of this machine's PyTorch build)
_AS_CHILD = """
import resource, sys
import torch
from xvol_cli.main import main
from xvol_export.limits import _mapped_bytes
resource.setrlimit(resource.RLIMIT_AS, (_mapped_bytes() + int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1]))
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny training checkpoint and its deploy form (folded, so that export skips the fold)."""
    from xvol_export import fold

    folder = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", stages=[2, 3], blocks_per_stage=1)
    randomize_bn(model, torch.Generator().manual_seed(3))
    model.eval()
    deploy, _ = fold(model)
    return {"train": save_checkpoint(model, folder / "train.pth"),
            "deploy": save_checkpoint(deploy, folder / "deploy.pth")}


def _xvol(child: str, limit: int, args: list, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", child, str(limit), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    done.stderr = " ".join(ANSI.sub("", done.stderr).split())  # the console's line wrapping undone
    return done


# ------------------------------------------------------------------------------------ the file-size limit

@linux
@pytest.mark.parametrize("case", ["fold .pth", "fold .safetensors", "export", "inspect --json"])
def test_a_file_size_limit_is_exit_2_naming_the_file_and_the_limit(checkpoints, dirs, case):
    """Each ended in exit 3 (``OSError: [Errno 27] File too large``; for .pth torch's ``unexpected pos``, for
    safetensors its ``SafetensorError``): now exit 2, with the file, the size it needs where known, the limit in
    force and what to do; nothing in the output folder or $TMPDIR."""
    out, tmp = dirs
    args, named, size = {
        "fold .pth": (["fold", checkpoints["train"], "-o", out / "d.pth"], out / "d.pth", "it needs about"),
        "fold .safetensors": (["fold", checkpoints["train"], "-o", out / "d.safetensors"], out / "d.safetensors",
                              "it needs about"),
        # the exporter's scratch file in $TMPDIR is the first to pass the limit
        "export": (["export", checkpoints["deploy"], "-o", out / "d.onnx", "--imgsz", "16"], "temporary file",
                   "it needs more than"),
        "inspect --json": (["inspect", checkpoints["train"], "--json", out / "r.json"], out / "r.json",
                           "it needs about"),
    }[case]
    if case.startswith("fold"):
        args += ["--seed", "0", "--input-shape", "1x3x16x16"]
    done = _xvol(_FSIZE_CHILD, FILE_SIZE_LIMIT, args, tmp)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    for words in (str(named), "cannot be written", size, "file-size limit", "ulimit -f", "2.93 KiB"):
        assert words in done.stderr, (words, done.stderr)
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(tmp)) == []


def test_a_full_disk_is_exit_2_naming_the_file_the_room_it_needs_and_the_fix(tmp_path):
    """ENOSPC while an output is written (here raised by hand: a full file system is not a test's to make): the
    file, the free space, the size it needs and the fix; the temporary file is gone."""
    target = tmp_path / "report.json"
    with pytest.raises(XvolError) as info, atomic_write(target, size=5 << 20) as tmp:
        tmp.write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(info.value)
    for words in (str(target), "the disk is full", "free in", "it needs about 5 MiB", "Free space there",
                  "another disk (-o)"):
        assert words in message, (words, message)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_in_rust_naming_the_errno_is_recognized(tmp_path, monkeypatch):
    """safetensors reports ``I/O error: No space left on device (os error 28)``: read as ENOSPC; the JSON writer's
    own size is given."""
    def full(self, text, *args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(XvolError, match=r"r\.json: cannot be written: the disk is full .*it needs about 30 B"):
        write_json(tmp_path / "r.json", {"a": [1, 2]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (every write: ENOSPC)")
def test_a_writer_that_replaces_the_write_error_still_shows_the_full_disk():
    """A writer in C++ (torch.save's zip writer) raises its own RuntimeError when a write fails, and whether the
    OSError survives as its context is up to pybind: the file xvol hands it keeps the OSError and raises it."""
    from xvol_export.io import open_for_native_writer

    def swallowing_writer(handle):  # what the C++ writer does: the write's exception is replaced by its own
        try:
            handle.write(b"x" * 100_000)  # past the file's buffer: nothing is left to fail again when it closes
        except OSError:
            pass
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 0 vs 100000") from None

    with pytest.raises(OSError) as info, open_for_native_writer("/dev/full") as handle:
        swallowing_writer(handle)
    assert info.value.errno == errno.ENOSPC and limits.out_of_room(info.value) is info.value


# ----------------------------------------------------------------------------------------- memory limits

@linux
@pytest.mark.parametrize("command", ["fold", "verify"])
def test_an_address_space_limit_is_the_memory_there_is(dirs, command):
    """``--input-shape 1000000x1x32x32`` (11 GiB of inputs) under ``ulimit -v`` of what xvol maps plus 1.5 GiB:
    exit 3 after failing to allocate 8.2 GB, because the estimate knew only the machine's memory; now exit 2,
    naming the limit in force."""
    out, tmp = dirs
    args = ([command, SAMPLE, "-o", out / "d.pth"] if command == "fold" else [command, SAMPLE, SAMPLE])
    done = _xvol(_AS_CHILD, 3 << 29, [*args, "--input-shape", "1000000x1x32x32", "--seed", "0"], tmp)
    assert done.returncode == 2, (done.stdout, done.stderr)
    for words in ("1000000x1x32x32", "needs about", "address-space limit", "ulimit -v", "mapped already",
                  "--input-shape"):
        assert words in done.stderr, (words, done.stderr)
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(tmp)) == []


def _cgroup_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("membership, files, room, words", [
    # cgroup v2: the process's cgroup has no limit, its parent has 1 GiB of which 768 MiB is used (256 MiB of that
    # reclaimable page cache)
    ("0::/job/step\n", {"job/step/memory.max": "max\n", "job/step/memory.current": "1000\n",
                        "job/memory.max": "1073741824\n", "job/memory.current": "805306368\n",
                        "job/memory.stat": "anon 1\ninactive_file 268435456\n", "memory.max": "max\n",
                        "memory.current": "5\n"},
     512 << 20, "cgroup v2 memory.max: 1 GiB, 512 MiB of it in use"),
    # cgroup v1, the memory controller alone in its hierarchy
    ("5:cpu:/other\n4:memory:/docker/abc\n", {"memory/docker/abc/memory.limit_in_bytes": "2147483648\n",
                                              "memory/docker/abc/memory.usage_in_bytes": "1073741824\n",
                                              "memory/memory.limit_in_bytes": "9223372036854771712\n",
                                              "memory/memory.usage_in_bytes": "1\n"},
     1 << 30, "cgroup v1 memory.limit_in_bytes: 2 GiB, 1 GiB of it in use"),
    # a container that sees its own cgroup as the root
    ("0::/\n", {"memory.max": "805306368\n", "memory.current": "268435456\n"},
     512 << 20, "cgroup v2 memory.max: 768 MiB"),
])
def test_a_cgroup_limit_of_the_process_or_a_parent_is_the_memory_there_is(tmp_path, monkeypatch, membership, files,
                                                                           room, words):
    _cgroup_tree(tmp_path / "cgroup", files)
    (tmp_path / "self_cgroup").write_text(membership)
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(limits, "PROC_CGROUP", tmp_path / "self_cgroup")
    monkeypatch.setattr(limits, "_machine_room", lambda: limits.MemoryRoom(64 << 30))
    monkeypatch.setattr(limits, "_address_space_room", lambda: None)
    found = limits.memory_room()
    assert found.bytes == room and words in found.limit, found
    assert limits.available_memory() == room
    with pytest.raises(XvolError) as info:
        limits.check_fits(room + 1, "the inputs", "Give a smaller --input-shape.")
    assert words in str(info.value) and "higher memory limit" in str(info.value), str(info.value)


@linux
def test_the_address_space_room_is_the_limit_less_what_is_mapped(monkeypatch):
    import resource

    mapped = limits._mapped_bytes()
    assert mapped > 0
    monkeypatch.setattr(resource, "getrlimit", lambda which: (mapped + (1 << 30), resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    room = limits._address_space_room()
    assert room is not None and (1 << 30) - (64 << 20) < room.bytes <= 1 << 30, room
    assert "ulimit -v" in room.limit
