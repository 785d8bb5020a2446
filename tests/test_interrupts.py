"""Signals and killed runs leave nothing behind (issue 10, parts 7 and 8).

Real ``xvol`` processes (the console script, as a user starts it): SIGINT, SIGTERM and SIGHUP while modules
import and while the export works end the run with 128+N and one line, ``interrupted (SIGTERM)``, and leave
neither the output's folder nor $TMPDIR with anything in it; a run killed with SIGKILL while it writes is
cleaned up by the next, which says so in one line; a normal export, verify and bench leave $TMPDIR empty
(ONNX Runtime's telemetry writes a ``.ses`` file there unless stopped or contained).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from xvol_export import cleanup

from helpers import ANSI, run_cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
XVOL = Path(sys.executable).parent / "xvol"

posix = pytest.mark.skipif(os.name != "posix" or not hasattr(signal, "SIGHUP"), reason="POSIX signals")
console_script = pytest.mark.skipif(not XVOL.exists(), reason="the xvol console script is not installed here")

SIGNALS = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", **extra}
    if "ORT_DISABLE_TELEMETRY" not in extra:
        env.pop("ORT_DISABLE_TELEMETRY", None)  # xvol must stop ONNX Runtime's .ses file by itself
    return env


def _start(command: list[str], tmp: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=_env(tmp, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"xvol ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.01)


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler yet (Linux: /proc's SigCgt); elsewhere: after 0.3 s."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        time.sleep(0.3)
        return True
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _exporting(tmp: Path) -> bool:
    """Whether the run's private $TMPDIR holds a folder yet (the exporter's)."""
    try:
        return any(any(folder.iterdir()) for folder in tmp.iterdir())
    except OSError:  # the run ended meanwhile: _wait_for says so
        return False


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@posix
@console_script
@pytest.mark.parametrize("moment", ["import", "export"])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_ends_the_run_with_its_code_one_line_and_no_files(dirs, name, moment):
    out, tmp = dirs
    proc = _start([str(XVOL), "export", str(SAMPLE), "-o", str(out / "m.onnx")], tmp)
    if moment == "import":  # torch and ONNX take seconds to import: xvol handles signals from the start
        _wait_for(lambda: _catches_sigterm(proc.pid), "SIGTERM handler", proc)
        time.sleep(0.1)
    else:  # torch.onnx.export writes into a folder in the run's private $TMPDIR
        _wait_for(lambda: _exporting(tmp), "ONNX export", proc)
        time.sleep(0.1)
    proc.send_signal(getattr(signal, name))
    stdout, stderr = proc.communicate(timeout=60)
    stderr = ANSI.sub("", stderr)
    assert proc.returncode == SIGNALS[name], (stdout, stderr)
    assert stderr.splitlines() == [f"interrupted ({name})"], stderr
    assert "FAILED" not in stdout and "PASSED" not in stdout
    assert _listing(out) == [] and _listing(tmp) == []


@posix
@pytest.mark.parametrize("name", list(SIGNALS))
def test_python_dash_m_handles_signals_while_torch_imports(dirs, name):
    """``python -m xvol_export`` imports the package before its ``__main__``; the package imports no torch, and
    ``__main__`` installs the handlers on its first lines, so a signal while torch imports ends the run with its
    one line."""
    out, tmp = dirs
    proc = _start([sys.executable, "-m", "xvol_export", "export", str(SAMPLE), "-o", str(out / "m.onnx")], tmp)
    _wait_for(lambda: _catches_sigterm(proc.pid), "SIGTERM handler", proc)
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.exists():  # Linux: the handler is there before torch's library is loaded, not after
        assert "libtorch" not in maps.read_text()
    proc.send_signal(getattr(signal, name))
    stdout, stderr = proc.communicate(timeout=60)
    stderr = ANSI.sub("", stderr)
    assert proc.returncode == SIGNALS[name], (stdout, stderr)
    assert stderr.splitlines() == [f"interrupted ({name})"], stderr
    assert _listing(out) == [] and _listing(tmp) == []


@posix
@console_script
def test_a_run_killed_while_writing_is_cleaned_up_by_the_next_one(dirs, tmp_path):
    out, tmp = dirs
    # the real export, whose ONNX write pauses once the temporary file holds the graph: the kill lands there
    driver = tmp_path / "slow_write.py"
    driver.write_text(
        "import sys, time, onnx\n"
        "save = onnx.save_model\n"
        "onnx.save_model = lambda *a, **k: (save(*a, **k), time.sleep(120))\n"
        "from xvol_cli.main import main\n"
        "main(sys.argv[1:])\n")
    proc = _start([sys.executable, str(driver), "export", str(SAMPLE), "-o", str(out / "m.onnx")], tmp)
    _wait_for(lambda: any(p.name.startswith(".m.onnx.") and p.name.endswith(".tmp") and p.stat().st_size
                          for p in out.iterdir()), "temporary .m.onnx.*.tmp", proc)
    proc.kill()
    proc.communicate(timeout=30)
    left = _listing(out) + _listing(tmp)
    assert len(left) == 2 and all(f"xvol-{proc.pid}-" in name for name in left), left  # SIGKILL: nothing ran

    again = subprocess.run([str(XVOL), "export", str(SAMPLE), "-o", str(out / "m.onnx")], cwd=ROOT, env=_env(tmp),
                           capture_output=True, text=True, timeout=120)
    stderr = ANSI.sub("", again.stderr)
    assert again.returncode == 0, (again.stdout, stderr)
    assert len(stderr.splitlines()) == 1 and stderr.startswith(
        "removed 2 temporary files left by an xvol run that was killed: "), stderr
    assert _listing(out) == ["m.onnx"] and _listing(tmp) == []


@console_script
def test_export_verify_and_bench_leave_tmpdir_empty(dirs):
    out, tmp = dirs
    graph = out / "m.onnx"
    runs = [
        ([str(XVOL), "export", str(SAMPLE), "-o", str(graph)], {}),
        # a user who keeps ONNX Runtime's telemetry on: its .ses file lands in the run's private $TMPDIR
        ([str(XVOL), "verify", str(SAMPLE), str(graph)], {"ORT_DISABLE_TELEMETRY": "0"}),
        ([str(XVOL), "bench", str(graph), "--warmup", "1", "--iterations", "5"], {}),
    ]
    for command, extra in runs:
        done = subprocess.run(command, cwd=ROOT, env=_env(tmp, **extra), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert _listing(tmp) == [], (command, _listing(tmp))
    assert _listing(out) == ["m.onnx"]


def test_library_use_leaves_tmpdir_empty(dirs):
    """A Python user of the library (no CLI): an export and its ONNX Runtime check leave nothing in $TMPDIR, not even
    ONNX Runtime's telemetry session file."""
    out, tmp = dirs
    script = ("from xvol_export.jobs import ExportSettings, export_checkpoint; "
              f"assert export_checkpoint({str(SAMPLE)!r}, {str(out / 'm.onnx')!r}, ExportSettings(seed=0)).written")
    proc = _start([sys.executable, "-c", script], tmp)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (stdout, stderr)
    assert _listing(out) == ["m.onnx"] and _listing(tmp) == []


def test_main_in_process_gives_back_signal_handlers_and_tmpdir(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    tempdir = tempfile.tempdir
    result = run_cli(capsys, "inspect", SAMPLE)
    assert result.code == 0, result.text
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.tempdir == tempdir
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_are_told_apart_from_live_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        dead_pid = int(dead.stdout)
        names = {
            "dead": f".m.onnx.{cleanup.owner_tag(dead_pid)}.0a1b2c3d.tmp",
            "dead folder": f"{cleanup.owner_tag(dead_pid)}.0a1b2c3d",
            "live": f".m.onnx.{cleanup.owner_tag(live.pid)}.0a1b2c3d.tmp",
            "reused pid": f".m.onnx.xvol-{live.pid}-{cleanup.owner_tag(live.pid)[-12:-6]}ffffff.0a1b2c3d.tmp",
            "other host, recent": f".m.onnx.xvol-{dead_pid}-000000000000.0a1b2c3d.tmp",
            "other host, old": f".n.onnx.xvol-{dead_pid}-000000000000.0a1b2c3d.tmp",
            "not ours": ".m.onnx.abcdefgh.tmp",
        }
        for key, name in names.items():
            (tmp_path / name).mkdir() if "folder" in key else (tmp_path / name).write_bytes(b"partial")
        old = time.time() - cleanup.FOREIGN_AGE_S - 60
        os.utime(tmp_path / names["other host, old"], (old, old))
        removed = cleanup.sweep(tmp_path, report=False)
        assert sorted(p.name for p in removed) == sorted(
            names[k] for k in ("dead", "dead folder", "reused pid", "other host, old"))
        assert _listing(tmp_path) == sorted(names[k] for k in ("live", "other host, recent", "not ours"))
    finally:
        live.kill()
        live.wait()


def test_atomic_write_names_its_temporary_file_after_its_process_and_removes_it_on_error(tmp_path):
    from xvol_export.io import atomic_write

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".out.json.{cleanup.owner_tag()}.")
        assert tmp.name.endswith(".tmp")
        tmp.write_text("partial")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------- a signal while a checkpoint's bytes are written (issue 17, item 4)

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny training checkpoint (two X-volution blocks) that folds in a fraction of a second at 16x16."""
    import torch

    from xvol_export import create_model
    from xvol_export.checkpoint import save_checkpoint

    from helpers import randomize_bn

    torch.manual_seed(0)
    model = create_model("xvol_resnet_tiny", stages=[2, 3], blocks_per_stage=1)
    randomize_bn(model, torch.Generator().manual_seed(3))
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("tiny") / "train.pth")


class _SignalOnWrite:
    """The file torch.save's zip writer (C++) writes through, which sends ``signum`` to this process on its third
    write: the handler's exception is raised inside the writer's callback, which torch swallows."""

    def __init__(self, handle, signum: int):
        self.handle, self.signum, self.writes = handle, signum, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            signal.raise_signal(self.signum)
        return self.handle.write(data)

    def flush(self):
        return self.handle.flush()


@posix
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_while_fold_writes_the_checkpoint_ends_the_run_and_leaves_nothing(
        dirs, tiny_checkpoint, monkeypatch, capsys, name, suffix):
    """The fuzz corpus's case: SIGTERM while ``fold`` writes the deploy checkpoint ended in exit 3
    (``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``: torch's zip writer swallows the
    ``Interrupted`` raised in its write callback). Now 143 (130, 129) and one line, like any interrupted run.
    safetensors is written in Rust, with no callback: the signal is handled once the temporary file is written."""
    import safetensors.torch
    import torch.serialization

    out, tmp = dirs
    monkeypatch.setenv("TMPDIR", str(tmp))
    signum = getattr(signal, name)
    writer = torch.serialization._open_zipfile_writer
    monkeypatch.setattr(torch.serialization, "_open_zipfile_writer",
                        lambda f: writer(_SignalOnWrite(f, signum) if hasattr(f, "write") else f))
    serialize, calls = safetensors.torch.serialize_file, []

    def serialize_then_signal(*args, **kwargs):  # a signal during the write in Rust is handled once it returns
        serialize(*args, **kwargs)
        calls.append(args[1])
        signal.raise_signal(signum)

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_then_signal)
    result = run_cli(capsys, "fold", tiny_checkpoint, "-o", out / f"deploy{suffix}", "--seed", "0",
                     "--input-shape", "1x3x16x16")
    assert result.code == SIGNALS[name], result.text
    assert result.err.strip().splitlines()[-1] == f"interrupted ({name})", result.err
    assert "internal error" not in result.text and "FAILED" not in result.out
    assert _listing(out) == [] and _listing(tmp) == []
    assert calls or suffix == ".pth"


def test_preserve_interrupts_raises_the_handlers_exception_that_a_writer_swallowed():
    """The library alone (no CLI): a KeyboardInterrupt raised by Python's own SIGINT handler inside a callback that
    turns it into another exception comes out as the KeyboardInterrupt; handlers are given back."""
    from xvol_export.cleanup import preserve_interrupts

    # Python's own handler, whatever this process inherited: a shell's background job starts with SIGINT ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def swallowing_writer():
            try:
                signal.raise_signal(signal.SIGINT)
                time.sleep(0)  # the handler runs at the next bytecode
            except KeyboardInterrupt:
                raise RuntimeError("unexpected pos 46 vs 0") from None

        with pytest.raises(KeyboardInterrupt):
            with preserve_interrupts():
                swallowing_writer()
        assert {s: signal.getsignal(s) for s in handlers} == handlers
    finally:
        signal.signal(signal.SIGINT, inherited)
