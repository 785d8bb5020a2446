"""Golden files: the pipeline's verdict, given again where PyTorch is not installed, and refused when tampered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from xvol_export.golden import load_golden
from xvol_export.io import sha256_file

from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
HOLDOUT = ROOT / "samples" / "digits_holdout.npz"

# `xvol` in a fresh process in which `import torch` fails, as on a host with only ONNX Runtime and OpenVINO
NO_TORCH = ("import sys; sys.modules['torch'] = None; from xvol_cli.main import main; main(sys.argv[1:])")


def xvol_without_torch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A pipeline run of the sample on 48 held-out digits: fp32 and fp16 graphs and the fp32 IR."""
    folder = tmp_path_factory.mktemp("golden")
    with np.load(HOLDOUT) as held:
        np.savez(folder / "held.npz", input=held["input"][:48], labels=held["labels"][:48])
    from xvol_cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", str(SAMPLE), "--out", str(folder / "out"), "--formats", "onnx,openvino",
                      "--precisions", "fp32,fp16", "--data", str(folder / "held.npz")])
    assert exit_.value.code == 0
    return folder, json.loads((folder / "out" / "manifest.json").read_text())


def _pipeline_check(manifest: dict, stage: str) -> dict:
    return next(c["figures"] for c in manifest["checks"] if c["stage"] == stage)


@pytest.mark.parametrize("artifact, stage", [("digits_xvol_resnet_tiny.onnx", "onnx fp32"),
                                             ("digits_xvol_resnet_tiny.xml", "openvino fp32"),
                                             ("digits_xvol_resnet_tiny.fp16.onnx", "onnx fp16")])
def test_an_artifact_gets_the_pipelines_verdict_where_pytorch_cannot_be_imported(made, artifact, stage):
    folder, manifest = made
    out = folder / "out"
    assert manifest["golden"]["file"] == "golden.npz"
    assert manifest["golden"]["sha256"] == sha256_file(out / "golden.npz")
    run = xvol_without_torch("verify", artifact, "--golden", "golden.npz", "--json", f"{artifact}.json", "--force",
                             cwd=out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == "PASSED"
    there, here = json.loads((out / f"{artifact}.json").read_text()), _pipeline_check(manifest, stage)
    assert there["passed"] == here["passed"] and there["precision"] == here["precision"]
    first, original = there["outputs"][0], here["outputs"][0]
    assert [c["limit"] for c in first["conditions"]] == [c["limit"] for c in original["conditions"]]
    assert first["candidate"]["rel_l2"] == pytest.approx(original["candidate"]["rel_l2"], rel=1e-3)
    assert there["accuracy"]["reference"] == here["accuracy"]["reference"]


def test_a_tampered_golden_file_fails(made, tmp_path, capsys):
    folder, _ = made
    with np.load(folder / "out" / "golden.npz") as loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    meta = json.loads(str(arrays["meta"]))
    for by_label in meta["baselines"]["fp32"]["output:output"].values():
        by_label["rel_l2"] *= 1000  # loosen the gate a thousandfold
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "loose.npz", **arrays)
    result = run_cli(capsys, "verify", folder / "out" / "digits_xvol_resnet_tiny.onnx", "--golden",
                     tmp_path / "loose.npz")
    assert result.code == 1 and result.last_line == "FAILED"
    assert "no longer match the sha256" in result.message
    arrays["meta"] = np.array(json.dumps({**meta, "baselines": json.loads(str(np.load(
        folder / "out" / "golden.npz")["meta"]))["baselines"]}))
    arrays["truth_0"] = arrays["truth_0"] + 1e-3  # other reference outputs, under the original digest
    np.savez(tmp_path / "moved.npz", **arrays)
    assert run_cli(capsys, "verify", folder / "out" / "digits_xvol_resnet_tiny.onnx", "--golden",
                   tmp_path / "moved.npz").code == 1


def test_an_artifact_that_is_not_the_golden_files_model_fails(made, tmp_path, capsys):
    folder, _ = made
    graph = onnx.load(str(folder / "out" / "digits_xvol_resnet_tiny.onnx"))
    conv = next(n for n in graph.graph.node if n.op_type == "Conv")
    init = next(i for i in graph.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1 + 1e-3), init.name))
    onnx.save(graph, str(tmp_path / "other.onnx"))
    result = run_cli(capsys, "verify", tmp_path / "other.onnx", "--golden", folder / "out" / "golden.npz")
    assert result.code == 1 and result.last_line == "FAILED" and "x over" in result.message


def test_what_a_golden_file_cannot_judge_is_refused_with_the_fix(made, tmp_path, capsys):
    folder, _ = made
    golden = folder / "out" / "golden.npz"
    result = run_cli(capsys, "verify", folder / "out" / "digits_xvol_resnet_tiny.onnx", "--golden", golden,
                     "--seed", "3")
    assert result.code == 2 and "drop --seed" in result.message
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    result = run_cli(capsys, "verify", folder / "out" / "digits_xvol_resnet_tiny.onnx", "--golden",
                     tmp_path / "junk.npz")
    assert result.code == 2 and "is not a golden file xvol wrote" in result.message
    reference = load_golden(golden)
    assert set(reference.baselines) == {"fp32", "fp16"}  # what the pipeline made, and nothing else
    result = run_cli(capsys, "verify", SAMPLE, "--golden", golden)
    assert result.code == 2 and "judges a deployed artifact" in result.message


def test_verify_save_golden_writes_one_only_when_the_check_passes(made, tmp_path, capsys):
    folder, _ = made
    graph = folder / "out" / "digits_xvol_resnet_tiny.onnx"
    result = run_cli(capsys, "verify", SAMPLE, graph, "--data", folder / "held.npz", "--save-golden",
                     tmp_path / "g.npz")
    assert result.code == 0 and (tmp_path / "g.npz").is_file()
    assert run_cli(capsys, "verify", graph, "--golden", tmp_path / "g.npz").code == 0
    result = run_cli(capsys, "verify", graph, SAMPLE, "--save-golden", tmp_path / "h.npz", "--seed", "1")
    assert result.code == 2 and "needs a checkpoint as the reference" in result.message
    assert not (tmp_path / "h.npz").exists()
