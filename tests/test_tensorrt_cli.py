"""The engine commands on a machine without TensorRT or a GPU: every path says what is missing and what to install,
exits 2 and leaves nothing behind. (On a GPU machine with TensorRT, test_tensorrt_gpu.py builds and runs engines.)"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from xvol_export.jobs import ExportSettings
from xvol_export.tensorrt.environment import engine_build_missing

from helpers import run_cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "digits_xvol_resnet_tiny.pth"

pytestmark = pytest.mark.skipif(engine_build_missing() is None, reason="TensorRT and a GPU are here: "
                                "test_tensorrt_gpu.py covers these commands for real")


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    from xvol_export.jobs import export_checkpoint

    folder = tmp_path_factory.mktemp("graph")
    result = export_checkpoint(SAMPLE, folder / "digits.onnx", ExportSettings(seed=0))
    assert result.written and result.tensorrt_compatibility["compatible"], result.tensorrt_compatibility
    return folder / "digits.onnx"


@pytest.fixture
def folder(tmp_path, monkeypatch, graph) -> Path:
    """A folder holding the sample checkpoint and its graph; temporary files go to ``tmp_path/tmp``."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SAMPLE, work / "digits.pth")
    shutil.copy(graph, work / "digits.onnx")
    (work / "corrupt.engine").write_bytes(b"\x00not a TensorRT plan")
    (work / "model.xml").write_text("<net/>")  # an IR whose weights (model.bin) are missing
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return work


TENSORRT = "TensorRT is not installed"
BAD = {
    "export an engine": (["export", "{dir}/digits.pth", "--format", "engine"], TENSORRT),
    "export an engine from a graph": (["export", "{dir}/digits.onnx", "--format", "engine"], TENSORRT),
    "a profile whose min exceeds its max": (
        ["export", "{dir}/digits.pth", "--format", "engine", "--min-shapes", "8x1x28x28", "--max-shapes", "1x1x28x28"],
        "dimension 0 must satisfy min <= opt <= max, but it is 8, 1, 1"),
    "profiles given unevenly": (["export", "{dir}/digits.onnx", "--format", "engine", "--min-shapes", "1x1x28x28"],
                                "once per profile"),
    "an unknown hardware compatibility": (["export", "{dir}/digits.onnx", "--format", "engine", "--hardware-compat",
                                           "turing"], "--hardware-compat must be one of none, ampere+, same-cc"),
    "an optimization level out of range": (["export", "{dir}/digits.onnx", "--format", "engine", "--opt-level", "9"],
                                           "--opt-level must be 0 to 5"),
    "a graph exported again": (["export", "{dir}/digits.onnx"], "is an ONNX graph already"),
    "bench a graph on tensorrt": (["bench", "{dir}/digits.onnx", "--backend", "tensorrt"], TENSORRT),
    "bench a corrupt engine": (["bench", "--engine", "{dir}/corrupt.engine"], TENSORRT),
    "verify an engine": (["verify", "{dir}/digits.pth", "{dir}/corrupt.engine"], TENSORRT),
    "an IR without its weights": (["bench", "{dir}/model.xml"], "its weights file model.bin is missing"),
    "verify an IR without its weights": (["verify", "{dir}/digits.pth", "{dir}/model.xml"],
                                         "its weights file model.bin is missing"),
}


@pytest.mark.parametrize("case", BAD)
def test_engine_paths_without_tensorrt_exit_2_and_write_nothing(case, folder, capsys):
    args, expected = BAD[case]
    before = sorted(p.name for p in folder.iterdir())
    r = run_cli(capsys, *[a.replace("{dir}", str(folder)) for a in args])
    assert r.code == 2, r.text
    assert expected in r.message, r.message
    if expected == TENSORRT:  # what to install, and where from
        assert "xvol[tensorrt]" in r.message and "https://pypi.nvidia.com" in r.message
    assert sorted(p.name for p in folder.iterdir()) == before
    assert list((folder.parent / "tmp").iterdir()) == []


def test_tensorrt_without_a_gpu_says_so(folder, capsys, monkeypatch):
    """TensorRT importable (a stand-in with its API's names) but no CUDA GPU: exit 2 naming the GPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    stand_in = types.ModuleType("tensorrt")
    stand_in.__version__, stand_in.Builder = "10.13.0.35", type("Builder", (), {})
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in)  # restored after the test
    before = sorted(p.name for p in folder.iterdir())
    r = run_cli(capsys, "export", folder / "digits.onnx", "--format", "engine")
    assert r.code == 2 and "no CUDA GPU PyTorch can use here" in r.message, r.text
    r = run_cli(capsys, "bench", "--engine", folder / "corrupt.engine")
    assert r.code == 2 and "no CUDA GPU PyTorch can use here" in r.message, r.text
    assert sorted(p.name for p in folder.iterdir()) == before
