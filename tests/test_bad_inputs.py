"""Every input a user can give, however broken, ends in exit 2 with a message that names the file or option and
the fix: never an internal error (exit 3), a hang, or memory ballooning; nothing written, nothing left in $TMPDIR.

Each case builds its broken file from the bundled sample (or a small ONNX graph), runs the real CLI in-process,
and checks the exit code, the words of the message, the folder (unchanged) and $TMPDIR (still empty). Memory
estimates are judged against a fixed 8 GiB of available memory, so the verdicts do not depend on the machine.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import signal
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from xvol_export import limits
from xvol_export.errors import XvolError

from helpers import run_cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "digits_xvol_resnet_tiny.pth"
MEMORY = 8 << 30  # the available memory every estimate is judged against here


@pytest.fixture(scope="module")
def sample() -> dict:
    return torch.load(SAMPLE, weights_only=True)


# ------------------------------------------------------------------------------------ file makers

def config(**changes):
    def make(folder: Path, ckpt: dict) -> None:
        edited = copy.deepcopy(ckpt)
        edited["config"].update(changes)
        torch.save(edited, folder / "bad.pth")
    return make


def weight_dtype(dtype: torch.dtype):
    def make(folder: Path, ckpt: dict) -> None:
        edited = copy.deepcopy(ckpt)
        edited["state_dict"]["conv1.weight"] = edited["state_dict"]["conv1.weight"].to(dtype)
        torch.save(edited, folder / "bad.pth")
    return make


def safetensors(header, *, int32_view: bool = False, name: str = "bad.safetensors"):
    def make(folder: Path, ckpt: dict) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
        if int32_view:  # float32 bits stored as int32
            tensors["conv1.weight"] = tensors["conv1.weight"].view(torch.int32)
        value = {k: v for k, v in ckpt.items() if k != "state_dict"} if header == "sample" else header
        save_file(tensors, str(folder / name), metadata={"xvol": json.dumps(value)})
    return make


def header(**changes):
    def make(folder: Path, ckpt: dict) -> None:
        edited = copy.deepcopy(ckpt)
        for key, value in changes.items():
            if value is ...:
                edited.pop(key)
            else:
                edited[key] = value
        torch.save(edited, folder / "bad.pth")
    return make


def toy_graph(name: str, elem_type: int = TensorProto.FLOAT, op: str = "MatMul", ir_version: int = 8):
    """A small image classifier graph (1x1x32x32 -> 1x10): flatten and one matrix product."""
    def make(folder: Path, ckpt: dict) -> None:
        x = helper.make_tensor_value_info("input", elem_type, [1, 1, 32, 32])
        y = helper.make_tensor_value_info("output", elem_type, [1, 10])
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1024])
        w = helper.make_tensor("w", elem_type, [1024, 10], [1] * 10240)
        graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["flat"]),
                                   helper.make_node(op, ["flat", "w"], ["output"])], "toy", [x], [y], [shape, w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = ir_version
        onnx.save(model, folder / name)
    return make


def npz(array, name: str = "bad.npz"):
    def make(folder: Path, ckpt: dict) -> None:
        np.savez(folder / name, input=array)
    return make


def pickle_member(folder: Path, ckpt: dict) -> None:
    with zipfile.ZipFile(folder / "bad.npz", "w") as archive:
        archive.writestr("input.npy", pickle.dumps([1, 2, 3]))


def huge_npz_header(folder: Path, ckpt: dict) -> None:
    """An .npy member whose header declares 10^12 images, followed by 4 KiB of data."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1, 32, 32), }"
    text = text.ljust(118) + "\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + bytes(4096)
    with zipfile.ZipFile(folder / "bad.npz", "w") as archive:
        archive.writestr("input.npy", member)


def zip_bomb(folder: Path, ckpt: dict) -> None:
    """The sample, re-zipped with one storage inflated to 64 MiB of zeros (deflated: a few dozen KiB)."""
    plain = io.BytesIO()
    torch.save(ckpt, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(folder / "bad.pth", "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data/0"):
                data += bytes((64 << 20) - len(data))
            bomb.writestr(info.filename, data)


def fifo(name: str):
    def make(folder: Path, ckpt: dict) -> None:
        os.mkfifo(folder / name)
    return make


def long_input(folder: Path, ckpt: dict) -> None:
    torch.save(ckpt, folder / ("a" * 249 + ".pth"))  # its default outputs (.deploy.pth, .onnx) are too long


def nothing(folder: Path, ckpt: dict) -> None:
    pass


def symlink_loop(folder: Path, ckpt: dict) -> None:
    """loop.pth -> other.pth -> loop.pth: no file at the end (``ln -s a b; ln -s b a``)."""
    os.symlink("other.pth", folder / "loop.pth")
    os.symlink("loop.pth", folder / "other.pth")


IMAGES = np.load(SAMPLES / "digits_holdout.npz")["input"][:8]
LONG = "b" * 300

# category -> case -> (make files, CLI arguments, words the message must hold)
CASES = {
    "checkpoint config": {
        "negative classes": (config(num_classes=-3), ["inspect", "bad.pth"],
                             ["bad.pth", "num_classes must be at least 1"]),
        "negative channels": (config(in_chans=-1), ["inspect", "bad.pth"], ["bad.pth", "in_chans must be at least 1"]),
        "classes not a number": (config(num_classes="ten"), ["inspect", "bad.pth"], ["num_classes must be an integer"]),
        "unknown X-volution argument": (config(xvol_kwargs={"kernel": 3}), ["inspect", "bad.pth"],
                                        ["xvol_kwargs has unknown key(s) ['kernel']"]),
        "stage 0": (config(stages=[0]), ["inspect", "bad.pth"], ["stages must be at least 1"]),
        "attention channels 10^6": (config(xvol_kwargs={"attn_channels": 10**6}), ["inspect", "bad.pth"],
                                    ["bad.pth", "its config describes a model of at least", "but the file holds"]),
        "shift 10^6": (config(xvol_kwargs={"shift": 10**6}), ["inspect", "bad.pth"],
                       ["bad.pth", "of activations", "needs about", "PiB", "available on this machine"]),
        "dilation 5000, dense": (config(xvol_kwargs={"dilation": 5000}), ["fold", "bad.pth", "--layout", "dense",
                                                                         "--seed", "0"],
                                 ["dense layout of dilation 5000", "20001x20001", "--layout split"]),
        "10^5 blocks per stage": (config(blocks_per_stage=10**5), ["inspect", "bad.pth"],
                                  ["300,000 blocks", "but the file holds"]),
        "10^9 blocks per stage": (config(blocks_per_stage=10**9), ["fold", "bad.pth"],
                                  ["3,000,000,000 blocks", "but the file holds"]),
    },
    "tensor dtypes": {
        "int64 weight": (weight_dtype(torch.int64), ["inspect", "bad.pth"], ["conv1.weight (int64", "wrong kind"]),
        "bool weight": (weight_dtype(torch.bool), ["inspect", "bad.pth"], ["conv1.weight (bool", "wrong kind"]),
        "uint8 weight": (weight_dtype(torch.uint8), ["fold", "bad.pth"], ["conv1.weight (uint8", "wrong kind"]),
        "complex weight": (weight_dtype(torch.complex64), ["bench", "bad.pth"],
                           ["conv1.weight (complex64", "wrong kind"]),
        "float32 bits as int32 (safetensors)": (safetensors("sample", int32_view=True), ["inspect", "bad.safetensors"],
                                                ["conv1.weight (int32", "wrong kind"]),
    },
    "ONNX Runtime refuses the graph": {
        "unknown operator, verify": (toy_graph("bad.onnx", op="NoSuchOp"),
                                     ["verify", "m.pth", "bad.onnx", "--seed", "0"],
                                     ["bad.onnx", "ONNX Runtime", "cannot load", "No Op registered for NoSuchOp"]),
        "unknown operator, bench": (toy_graph("bad.onnx", op="NoSuchOp"), ["bench", "bad.onnx"],
                                    ["bad.onnx", "cannot load", "NoSuchOp"]),
        "IR version 99, verify": (toy_graph("bad.onnx", ir_version=99), ["verify", "m.pth", "bad.onnx", "--seed", "0"],
                                  ["bad.onnx", "IR version: 99", "newer onnxruntime"]),
        "IR version 99, bench": (toy_graph("bad.onnx", ir_version=99), ["bench", "bad.onnx"], ["IR version: 99"]),
        "int64 input, verify": (toy_graph("bad.onnx", TensorProto.INT64),
                                ["verify", "m.pth", "bad.onnx", "--seed", "0"],
                                ["bad.onnx", "input 'input' is tensor(int64)", "floating point"]),
        "int64 input, bench": (toy_graph("bad.onnx", TensorProto.INT64), ["bench", "bad.onnx"],
                               ["input 'input' is tensor(int64)"]),
    },
    "output paths": {
        "default fold output name too long": (long_input, ["fold", "a" * 249 + ".pth", "--seed", "0"],
                                              ["output name xvol makes", "bytes long", "-o"]),
        "default export output name too long": (long_input, ["export", "a" * 249 + ".pth"],
                                                ["output name xvol makes", "-o"]),
        "-o name too long": (nothing, ["fold", "m.pth", "-o", LONG + ".pth"], ["--output is 304 bytes long"]),
        "--json name too long": (nothing, ["inspect", "m.pth", "--json", LONG + ".json"], ["--json is 305 bytes long"]),
    },
    "input data": {
        "zero-length array": (npz(np.zeros((0, 1, 32, 32), np.float32)), ["fold", "m.pth", "--data", "bad.npz"],
                              ["bad.npz", "holds no inputs"]),
        "5-D array": (npz(np.zeros((2, 1, 32, 32, 3), np.float32)), ["fold", "m.pth", "--data", "bad.npz"],
                      ["bad.npz", "5 dimensions", "N x C x H x W"]),
        "zero-width array": (npz(np.zeros((2, 1, 32, 0), np.float32)),
                             ["verify", "m.pth", "m.pth", "--data", "bad.npz"], ["bad.npz", "dimension of size 0"]),
        "member of raw pickle bytes": (pickle_member, ["fold", "m.pth", "--data", "bad.npz"],
                                       ["bad.npz", "member 'input' is not a numpy array", "numpy.savez"]),
        "NaN in --data": (npz(np.where(np.arange(IMAGES.size).reshape(IMAGES.shape) == 5, np.nan, IMAGES)),
                          ["fold", "m.pth", "--data", "bad.npz"], ["bad.npz", "NaN or Inf"]),
        "values near float32's limit": (npz(np.full((4, 1, 32, 32), 3.3e38, np.float32)),
                                        ["fold", "m.pth", "--data", "bad.npz"], ["bad.npz", "3.3e+38", "overflows"]),
        "float64 values beyond float32": (npz(np.full((4, 1, 32, 32), 1e300)), ["fold", "m.pth", "--data", "bad.npz"],
                                          ["bad.npz", "beyond float32's range"]),
        "--calib near float32's limit": (npz(np.full((4, 1, 32, 32), -3.3e38, np.float32)),
                                         ["export", "m.pth", "--precision", "int8", "--calib", "bad.npz"],
                                         ["bad.npz", "3.3e+38"]),
        "5-D --calib": (npz(np.zeros((2, 1, 32, 32, 3), np.float32)),
                        ["export", "m.pth", "--precision", "int8", "--calib", "bad.npz"], ["bad.npz", "do not fit"]),
    },
    "checkpoint headers": {
        "xvol header is a list": (safetensors([1, 2]), ["inspect", "bad.safetensors"],
                                  ["a JSON list", "save_checkpoint"]),
        "xvol header is a string": (safetensors("text"), ["inspect", "bad.safetensors"], ["a JSON string"]),
        "xvol header is null": (safetensors(None), ["inspect", "bad.safetensors"], ["a JSON null"]),
        "no format_version": (header(format_version=...), ["inspect", "bad.pth"], ["bad.pth", "no format_version"]),
        "format_version 'one'": (header(format_version="one"), ["inspect", "bad.pth"],
                                 ["format_version is 'one', not a version number"]),
        "format_version 0": (header(format_version=0), ["fold", "bad.pth"], ["format_version is 0"]),
    },
    "hangs and balloons": {
        "checkpoint is a FIFO": (fifo("pipe.pth"), ["inspect", "pipe.pth"], ["pipe.pth", "named pipe (FIFO)"]),
        "--data is a FIFO": (fifo("pipe.npz"), ["fold", "m.pth", "--data", "pipe.npz"], ["pipe.npz", "named pipe"]),
        "graph is a FIFO": (fifo("pipe.onnx"), ["bench", "pipe.onnx"], ["pipe.onnx", "named pipe"]),
        ".pth member inflating to 64 MiB": (zip_bomb, ["inspect", "bad.pth"],
                                            ["bad.pth", "would unpack to 65.5 MiB from a", "zip bomb"]),
        "--input-shape 1x1x99999x99999": (nothing, ["fold", "m.pth", "--input-shape", "1x1x99999x99999"],
                                          ["1x1x99999x99999", "needs about", "GiB", "--input-shape"]),
        "export --batch 100000": (nothing, ["export", "m.pth", "--batch", "100000"], ["batch 100000", "needs about"]),
        "bench --batch 100000": (nothing, ["bench", "m.pth", "--batch", "100000"], ["batch 100000", "--batch"]),
        "bench --imgsz 99999": (nothing, ["bench", "m.pth", "--imgsz", "99999"], ["99999x99999", "needs about"]),
        ".npz header of 10^12 images": (huge_npz_header, ["fold", "m.pth", "--data", "bad.npz"],
                                        ["bad.npz", "(1000000000000, 1, 32, 32)", "PiB", "truncated or damaged"]),
    },
    "integers": {
        "--seed 2^64": (nothing, ["fold", "m.pth", "--seed", str(2**64)],
                        ["--seed must be an integer from 0 to 4294967295"]),
        "fold --seed -1": (nothing, ["fold", "m.pth", "--seed", "-1"], ["--seed", "got -1"]),
        "bench --seed -5": (nothing, ["bench", "m.pth", "--seed", "-5"], ["--seed", "got -5"]),
        "verify --seed 2^32": (nothing, ["verify", "m.pth", "m.pth", "--seed", str(2**32)], ["got 4294967296"]),
        "export --seed -3": (nothing, ["export", "m.pth", "--seed", "-3"], ["--seed", "got -3"]),
        "shape dimension 10^20": (nothing, ["fold", "m.pth", "--input-shape", f"1x1x{10**20}x2"],
                                  [f"1x1x{10**20}x2", "needs about"]),
    },
    "shapes and links": {
        "inspect --input-shape of rank 3": (nothing, ["inspect", "m.pth", "--input-shape", "1x32x32"],
                                            ["Input shape 1x32x32", "four dimensions", "--input-shape 1x1x32x32"]),
        "inspect --input-shape of 3 channels": (nothing, ["inspect", "m.pth", "--input-shape", "1x3x32x32"],
                                                ["3 channel(s) but m.pth takes 1", "--input-shape 1x1x32x32"]),
        "checkpoint is a symlink loop, fold": (symlink_loop, ["fold", "loop.pth", "--seed", "0"],
                                               ["loop.pth", "loop of symbolic links", "fix the links"]),
        "checkpoint is a symlink loop, inspect --json": (symlink_loop, ["inspect", "loop.pth", "--json", "r.json"],
                                                         ["loop.pth", "loop of symbolic links"]),
    },
}
FLAT = {f"{category}: {case}": spec for category, cases in CASES.items() for case, spec in cases.items()}


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO that is opened blocks for ever)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it hangs")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def listing(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with the hash of each regular file (never opening a FIFO)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def work(tmp_path, monkeypatch, sample):
    """A folder holding the sample as m.pth (the current folder), an empty $TMPDIR, and 8 GiB of free memory."""
    folder, tmp = tmp_path / "work", tmp_path / "tmp"
    folder.mkdir()
    tmp.mkdir()
    (folder / "m.pth").write_bytes(SAMPLE.read_bytes())
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    monkeypatch.setattr(limits, "memory_room", lambda: limits.MemoryRoom(MEMORY))
    return folder, tmp


@pytest.mark.parametrize("case", FLAT)
def test_bad_input_is_refused_with_its_fix(case, work, sample, capsys):
    folder, tmp = work
    make, args, words = FLAT[case]
    make(folder, sample)
    before = listing(folder)
    with deadline(60):
        r = run_cli(capsys, *args)
    assert r.code == 2, r.text
    assert "internal error" not in r.text and "Traceback" not in r.text, r.text
    for word in words:
        assert word in r.message, f"{word!r} not in: {r.message}"
    assert listing(folder) == before  # nothing written, nothing left behind
    assert list(tmp.iterdir()) == []


def test_readme_counts_these_cases():
    """README's "Bad inputs and faults" table: one row per category, with this file's count of its cases."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Bad inputs and faults", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0]: int(cells[1]) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| "))
            if cells[1].isdigit()}
    assert rows == {category: len(cases) for category, cases in CASES.items()}


# ------------------------------------------------------------ what works, and what only the library sees

def test_uppercase_safetensors_suffix_reads_like_lowercase(work, sample, capsys):
    folder, _ = work
    safetensors("sample", name="M.SAFETENSORS")(folder, sample)
    r = run_cli(capsys, "inspect", "M.SAFETENSORS")
    assert r.code == 0, r.text


def test_double_input_graph_is_fed_doubles(work, sample, capsys):
    folder, _ = work
    toy_graph("double.onnx", TensorProto.DOUBLE)(folder, sample)
    r = run_cli(capsys, "bench", "double.onnx", "--iterations", "2", "--warmup", "0")
    assert r.code == 0, r.text


@pytest.mark.parametrize("job", ["fold", "export"])
def test_output_written_as_a_folder_is_refused(job, work):
    """``-o newdir/`` given to the library as text: refused before any work (pathlib would drop the slash)."""
    from xvol_export import jobs

    folder, tmp = work
    before = listing(folder)
    run = jobs.fold_checkpoint if job == "fold" else jobs.export_checkpoint
    with pytest.raises(XvolError, match="names a folder"):
        run("m.pth", "newdir/")
    assert listing(folder) == before and list(tmp.iterdir()) == []


def test_memory_estimates_use_the_machine(monkeypatch):
    monkeypatch.setattr(limits, "memory_room", lambda: limits.MemoryRoom(1 << 30))
    limits.check_fits(1 << 29, "half of it")
    with pytest.raises(XvolError, match=r"twice it needs about 2 GiB of memory, more than the 1 GiB available"):
        limits.check_fits(2 << 30, "twice it", "Ask for less.")
    assert limits.format_bytes(float("inf")) == "an unbounded amount"


def test_available_memory_is_read():
    assert 0 < limits.available_memory() < 2**63 - 1
