"""The `xvol` command line, run for real: exit codes, the PASSED/FAILED last line, --json reports,
user errors without tracebacks, and nothing written when a run fails."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xvol_export import create_model
from xvol_export.checkpoint import is_folded, load_checkpoint, load_model, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.jobs import FoldSettings, fold_checkpoint
from xvol_export.jsonio import write_json
from xvol_export.tensorrt.environment import tensorrt_missing

from helpers import ANSI, Result, randomize_bn, run_cli

ARCH = "xvol_resnet_tiny"
ARCH_CONFIG = {"stages": [2, 3], "blocks_per_stage": 1}  # tiny: two X-volution blocks
BLOCKS = ["layer2.0.conv1", "layer3.0.conv1"]




def run_module(cwd: Path, *args, timeout: int = 120) -> Result:
    """``python -m xvol_export ARGS`` in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "xvol_export", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, ANSI.sub("", proc.stdout), ANSI.sub("", proc.stderr))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden temporaries included) with its hash."""
    return {str(p.relative_to(folder)): _sha256(p) if p.is_file() else "<dir>" for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny training checkpoint (random BN statistics) and its verified deploy checkpoint."""
    folder = tmp_path_factory.mktemp("cli_shared")
    torch.manual_seed(0)
    model = create_model(ARCH, **ARCH_CONFIG)
    randomize_bn(model, torch.Generator().manual_seed(3))
    model.eval()
    save_checkpoint(model, folder / "train.pth")
    result = fold_checkpoint(folder / "train.pth", folder / "deploy.pth", FoldSettings(seed=0, tolerance=Tolerance()))
    assert result.written
    return {"folder": folder, "model": model, "train": folder / "train.pth", "deploy": folder / "deploy.pth",
            "train_dict": torch.load(folder / "train.pth", weights_only=True)}


@pytest.fixture
def work(tmp_path, shared, monkeypatch):
    """A fresh folder holding train.pth and deploy.pth, made the current folder (paths stay short)."""
    shutil.copy(shared["train"], tmp_path / "train.pth")
    shutil.copy(shared["deploy"], tmp_path / "deploy.pth")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _save_edited(shared, name: str, edit) -> None:
    obj = {**shared["train_dict"], "state_dict": {k: v.clone() for k, v in shared["train_dict"]["state_dict"].items()}}
    edit(obj)
    torch.save(obj, name)


# ------------------------------------------------------------------------------------------- fold

def test_fold_writes_verified_deploy_checkpoint_and_report(capsys, work, shared):
    r = run_cli(capsys, "fold", "train.pth", "-o", "out.pth", "--json", "report.json", "--seed", "7")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "Traceback" not in r.text
    assert "wrote out.pth" in r.out and "seed 7" in r.out
    assert set(_listing(work)) == {"train.pth", "deploy.pth", "out.pth", "report.json"}

    report = json.loads((work / "report.json").read_text())
    assert report["status"] == "PASSED" and report["command"] == "fold"
    assert report["passed"] is True and report["written"] is True
    assert report["source_sha256"] == _sha256(work / "train.pth")
    assert [b["name"] for b in report["fold"]["blocks"]] == BLOCKS
    assert all(b["layout"] in ("dense", "split") for b in report["fold"]["blocks"])
    assert report["fold"]["remaining_batchnorms"] == []
    verification = report["verification"]
    assert verification["inputs"]["seed"] == 7
    assert verification["passed"] is True
    assert 0 <= verification["output"]["max_abs"] < 1e-4
    assert verification["output"]["cosine"] > 0.999999
    assert [b["name"] for b in verification["blocks"]] == BLOCKS
    assert all(b["isolated"]["passed"] for b in verification["blocks"])

    # the deploy checkpoint: folded, rebuilt in deploy form, and computes what the training model does
    deploy, ckpt = load_model(work / "out.pth")
    assert ckpt.folded and is_folded(deploy) and set(ckpt.layouts) == set(BLOCKS)
    assert ckpt.metadata["source_sha256"] == _sha256(work / "train.pth")
    assert ckpt.metadata["verification"]["max_abs"] == verification["output"]["max_abs"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = shared["model"](x), deploy(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fold_default_output_and_fresh_seed(capsys, work):
    r = run_cli(capsys, "fold", "train.pth", "--layout", "dense")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert (work / "train.deploy.pth").is_file()
    assert re.search(r"seed \d+", r.out)  # a fresh seed, reported so the run can be repeated
    ckpt = load_checkpoint(work / "train.deploy.pth")
    assert ckpt.layouts == {b: "dense" for b in BLOCKS}


def test_fold_failing_verification_writes_no_checkpoint(capsys, work):
    before = _listing(work)
    r = run_cli(capsys, "fold", "train.pth", "-o", "out.pth", "--atol", "0", "--rtol", "0", "--seed", "2",
                "--json", "report.json")
    assert r.code == 1, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "abs=" in r.message and "rel=" in r.message
    assert not (work / "out.pth").exists()
    assert set(_listing(work)) == set(before) | {"report.json"}  # only the report, which says FAILED
    report = json.loads((work / "report.json").read_text())
    assert report["status"] == "FAILED" and report["written"] is False
    assert report["verification"]["output"]["max_abs"] > 0


def test_fold_refuses_existing_output_then_force_overwrites(capsys, work):
    (work / "out.pth").write_bytes(b"an older artifact")
    r = run_cli(capsys, "fold", "train.pth", "-o", "out.pth", "--seed", "1")
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "out.pth" in r.message and "--force" in r.message
    assert (work / "out.pth").read_bytes() == b"an older artifact"

    r = run_cli(capsys, "fold", "train.pth", "-o", "out.pth", "--seed", "1", "--force")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert load_checkpoint(work / "out.pth").folded
    assert sorted(p.name for p in work.iterdir()) == ["deploy.pth", "out.pth", "train.pth"]


def test_fold_with_existing_json_report_writes_nothing(capsys, work):
    (work / "report.json").write_text("{}")
    r = run_cli(capsys, "fold", "train.pth", "-o", "out.pth", "--json", "report.json", "--seed", "1")
    assert r.code == 2
    assert "report.json" in r.message
    assert (work / "report.json").read_text() == "{}"
    assert not (work / "out.pth").exists()


# ----------------------------------------------------------------------------------------- verify

def test_verify_training_against_deploy_passes(capsys, work):
    r = run_cli(capsys, "verify", "train.pth", "deploy.pth", "--seed", "1", "--json", "v.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "seed 1" in r.out and "minimum required tolerance" in r.out
    report = json.loads((work / "v.json").read_text())
    assert report["status"] == "PASSED" and report["command"] == "verify"
    assert report["inputs"]["seed"] == 1
    assert report["tolerance"] is None and report["judged_by"] == "default fp32 gate"
    assert report["float64_reference"] is True and report["gate"]["factor"] == 4.0
    output = report["outputs"][0]
    assert output["name"] == "output" and output["baseline"]["rel_l2"] > 0 and output["ratio_rel_l2"] < 4
    assert [b["name"] for b in report["blocks"]] == BLOCKS


def test_verify_fails_at_zero_tolerance_and_says_by_how_much(capsys, work):
    r = run_cli(capsys, "verify", "train.pth", "deploy.pth", "--seed", "1", "--atol", "0", "--rtol", "0",
                "--json", "v.json")
    assert r.code == 1, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "abs=" in r.message and "rel=" in r.message
    assert "atol=0" in r.message
    report = json.loads((work / "v.json").read_text())
    assert report["status"] == "FAILED" and report["passed"] is False


def test_verify_with_statistic_and_npz_data(capsys, work):
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.savez("data.npz", input=x, labels=np.array([1, 2, 3]))
    r = run_cli(capsys, "verify", "train.pth", "deploy.pth", "--data", "data.npz", "--check-error-stat", "median",
                "--json", "v.json")
    assert r.code == 0, r.text
    report = json.loads((work / "v.json").read_text())
    assert report["inputs"]["source"] == "data.npz" and report["inputs"]["shape"] == [3, 3, 32, 32]
    assert report["output"]["check_error_stat"] == "median"
    assert report["accuracy"]["count"] == 3


# ---------------------------------------------------------------------------------- inspect, doctor

def test_inspect_json(capsys, work):
    r = run_cli(capsys, "inspect", "train.pth", "--json", "i.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    report = json.loads((work / "i.json").read_text())
    assert report["status"] == "PASSED" and report["command"] == "inspect"
    assert report["architecture"] == ARCH and report["folded"] is False
    assert report["config"]["stages"] == [2, 3]
    assert report["input_shape"] == [1, 3, 32, 32]
    assert [b["name"] for b in report["blocks"]] == BLOCKS
    assert report["params"] > report["params_after"] > 0
    assert report["macs"] > 0 and report["batchnorms"] > 0
    assert set(_listing(work)) == {"train.pth", "deploy.pth", "i.json"}  # inspect writes nothing else


def test_inspect_deploy_checkpoint(capsys, work):
    r = run_cli(capsys, "inspect", "deploy.pth", "--json", "i.json")
    assert r.code == 0, r.text
    report = json.loads((work / "i.json").read_text())
    assert report["folded"] is True and report["batchnorms"] == 0
    assert [b["reason"] for b in report["blocks"]] == ["folded", "folded"]


def test_doctor_json(capsys, work):
    r = run_cli(capsys, "doctor", "--json", "d.json")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    report = json.loads((work / "d.json").read_text())
    assert report["status"] == "PASSED"
    assert report["packages"]["torch"] == importlib.metadata.version("torch")
    assert report["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert ARCH in report["architectures"]
    openvino = report["openvino"]
    assert openvino["available"] is (importlib.util.find_spec("openvino") is not None)
    if openvino["available"]:  # what OpenVINO's CPU plugin would compute fp32 graphs in, said plainly
        assert openvino["cpu_default_inference_precision"] in ("f32", "bf16", "f16") and "OpenVINO:" in r.out
    if tensorrt_missing() is None:
        pytest.skip("TensorRT is installed here")
    assert report["tensorrt"]["available"] is False
    assert "TensorRT" in report["tensorrt"]["reason"]
    assert "TensorRT" in r.out


# ------------------------------------------------------------------------------------ bad input

def _not_a_checkpoint(shared):
    with open("arrays.pth", "wb") as handle:
        np.savez(handle, input=np.zeros(3))


def _text_file(shared):
    Path("notes.pth").write_text("hello world, not a checkpoint\n")


def _truncated(shared):
    data = Path("train.pth").read_bytes()
    Path("truncated.pth").write_bytes(data[: len(data) // 2])


def _truncated_safetensors(shared):
    save_checkpoint(shared["model"], "whole.safetensors")
    data = Path("whole.safetensors").read_bytes()
    Path("truncated.safetensors").write_bytes(data[: len(data) // 2])
    Path("whole.safetensors").unlink()


def _keys(shared):
    def edit(obj):
        del obj["state_dict"]["fc.bias"]
        obj["state_dict"]["extra.weight"] = torch.zeros(3)

    _save_edited(shared, "keys.pth", edit)


def _nan(shared):
    def edit(obj):
        obj["state_dict"]["layer1.0.conv2.weight"][0, 0, 1, 1] = float("nan")

    _save_edited(shared, "nan.pth", edit)


def _negative_variance(shared):
    def edit(obj):
        obj["state_dict"]["layer1.0.bn1.running_var"][2] = -1.0

    _save_edited(shared, "negvar.pth", edit)


def _gray_npz(shared):
    np.savez("gray.npz", input=np.zeros((2, 1, 32, 32), np.float32))


def _whole_module(shared):
    torch.save(shared["model"], "whole.pth")


def _bare_state_dict(shared):
    torch.save(shared["model"].state_dict(), "bare.pth")


def _existing_output(shared):
    Path("existing.pth").write_bytes(b"keep me")


def _nothing(shared):
    pass


FOLD_OUT = ["-o", "out.pth", "--json", "report.json", "--seed", "1"]

BAD_INPUT = [
    pytest.param(_nothing, ["fold", "nothere.pth", *FOLD_OUT], ["nothere.pth", "no such file", "Check the path"],
                 id="missing-file"),
    pytest.param(_not_a_checkpoint, ["fold", "arrays.pth", *FOLD_OUT], ["arrays.pth", "not a PyTorch checkpoint",
                                                                         "Expected a .pth"], id="not-a-checkpoint"),
    pytest.param(_text_file, ["fold", "notes.pth", *FOLD_OUT], ["notes.pth", "not a PyTorch checkpoint"],
                 id="text-file"),
    pytest.param(_truncated, ["fold", "truncated.pth", *FOLD_OUT], ["truncated.pth", "truncated",
                                                                     "Copy or download it again"], id="truncated"),
    pytest.param(_truncated_safetensors, ["fold", "truncated.safetensors", *FOLD_OUT],
                 ["truncated.safetensors", "copy it again"], id="truncated-safetensors"),
    pytest.param(_keys, ["fold", "keys.pth", *FOLD_OUT], ["keys.pth", "missing", "fc.bias", "unexpected",
                                                           "extra.weight", "Check that"], id="missing-unexpected-keys"),
    pytest.param(_nan, ["fold", "nan.pth", *FOLD_OUT], ["nan.pth", "NaN", "layer1.0.conv2.weight",
                                                         "use an earlier checkpoint"], id="nan-weights"),
    pytest.param(_negative_variance, ["fold", "negvar.pth", *FOLD_OUT],
                 ["negvar.pth", "negative", "layer1.0.bn1.running_var", "use the original"], id="negative-variance"),
    pytest.param(_whole_module, ["fold", "whole.pth", *FOLD_OUT], ["whole.pth", "--trust-pickle"],
                 id="pickled-module"),
    pytest.param(_bare_state_dict, ["fold", "bare.pth", *FOLD_OUT], ["bare.pth", "--arch"], id="bare-state-dict"),
    pytest.param(_nothing, ["fold", "train.pth", "--input-shape", "1x3xfoo", *FOLD_OUT],
                 ["1x3xfoo", "1x3x224x224"], id="malformed-shape"),
    pytest.param(_nothing, ["fold", "train.pth", "--input-shape", "2x1x32x32", *FOLD_OUT],
                 ["2x1x32x32", "channel"], id="shape-wrong-channels"),
    pytest.param(_nothing, ["fold", "train.pth", "--layout", "diagonal", *FOLD_OUT],
                 ["diagonal", "Choose one of", "dense", "split"], id="unknown-layout"),
    pytest.param(_nothing, ["fold", "train.pth", "-o", "nodir/out.pth", "--json", "report.json"],
                 ["nodir", "does not exist", "Create it first"], id="output-folder-missing"),
    pytest.param(_existing_output, ["fold", "train.pth", "-o", "existing.pth", "--json", "report.json"],
                 ["existing.pth", "already exists", "--force"], id="output-exists"),
    pytest.param(_gray_npz, ["fold", "train.pth", "--data", "gray.npz", *FOLD_OUT],
                 ["gray.npz", "1 channel", "takes 3"], id="npz-wrong-channels"),
    pytest.param(_nothing, ["fold", "train.pth", "--data", "nothere.npz", *FOLD_OUT],
                 ["nothere.npz", "no such file"], id="npz-missing"),
    pytest.param(_nothing, ["fold", "train.pth", "--check-error-stat", "p99", *FOLD_OUT],
                 ["p99", "Choose one of", "elemwise"], id="unknown-error-stat"),
    pytest.param(_nothing, ["fold", "train.pth", "--atol", "-1", *FOLD_OUT], ["--atol", "positive"],
                 id="negative-atol"),
    pytest.param(_nothing, ["fold", "train.pth", "--atol", "nan", *FOLD_OUT], ["--atol", "finite"],
                 id="nan-atol"),  # NaN passes a '< 0' test and would switch the check off
    pytest.param(_nothing, ["verify", "train.pth", "train.pth", "--rtol", "inf", "--json", "report.json"],
                 ["--rtol", "finite"], id="infinite-rtol"),
    pytest.param(_nothing, ["fold", "train.pth", "--dtype", "fp8", *FOLD_OUT], ["fp8", "fp16", "bf16"],
                 id="unknown-dtype"),
    pytest.param(_nothing, ["fold", "deploy.pth", "--layout", "dense", *FOLD_OUT],
                 ["deploy.pth", "already folded", "split", "--layout dense"], id="refold-other-layout"),
    pytest.param(_nothing, ["fold", "train.pth", "--arch-config", "{stages", *FOLD_OUT], ["--arch-config", "JSON"],
                 id="bad-arch-config"),
    pytest.param(_nothing, ["verify", "train.pth", "nothere.pth", "--json", "report.json"],
                 ["nothere.pth", "no such file"], id="verify-missing-candidate"),
    pytest.param(_nan, ["verify", "train.pth", "nan.pth", "--json", "report.json"],
                 ["nan.pth", "layer1.0.conv2.weight"], id="verify-nan-candidate"),
    pytest.param(_truncated, ["inspect", "truncated.pth", "--json", "report.json"], ["truncated.pth", "truncated"],
                 id="inspect-truncated"),
]


@pytest.mark.parametrize("setup, argv, words", BAD_INPUT)
def test_bad_input_exits_2_without_traceback_or_output(capsys, work, shared, setup, argv, words):
    setup(shared)
    before = _listing(work)
    r = run_cli(capsys, *argv)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "internal error" not in r.text
    for word in words:
        assert word in r.message, (word, r.message)
    assert _listing(work) == before  # nothing created or changed (no output, no report, no temporary file)


def test_unknown_architecture_names_the_file(capsys, work, shared):
    _save_edited(shared, "alien.pth", lambda o: o.update({"architecture": "alien_net"}))
    r = run_cli(capsys, "fold", "alien.pth", *FOLD_OUT)
    assert "alien.pth" in r.message


def test_unknown_architecture(capsys, work, shared):
    _save_edited(shared, "alien.pth", lambda o: o.update({"architecture": "alien_net"}))
    before = _listing(work)
    r = run_cli(capsys, "fold", "alien.pth", *FOLD_OUT)
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "alien_net" in r.message and ARCH in r.message  # what is wrong, and the names that would work
    assert _listing(work) == before


def test_bare_state_dict_with_arch_and_config(capsys, work, shared):
    _bare_state_dict(shared)
    r = run_cli(capsys, "inspect", "bare.pth", "--arch", ARCH, "--arch-config", json.dumps(ARCH_CONFIG),
                "--json", "i.json")
    assert r.code == 0, r.text
    assert json.loads((work / "i.json").read_text())["architecture"] == ARCH


def test_usage_errors_exit_2(capsys, work):
    for argv in (["fold", "train.pth", "--no-such-option"], ["fold"], ["no-such-command"]):
        r = run_cli(capsys, *argv)
        assert r.code == 2, (argv, r.text)
        assert r.last_line == "FAILED", argv
        assert "Traceback" not in r.text
    assert sorted(p.name for p in work.iterdir()) == ["deploy.pth", "train.pth"]


def test_help_exits_0_without_verdict(capsys):
    r = run_cli(capsys, "fold", "--help")
    assert r.code == 0
    assert "--atol" in r.out and "--force" in r.out
    assert r.last_line not in ("PASSED", "FAILED")


def test_debug_shows_traceback_for_user_error(capsys, work):
    r = run_cli(capsys, "fold", "nothere.pth", "--debug")
    assert r.code == 2
    assert r.last_line == "FAILED"
    assert "Traceback" in r.text
    assert "XvolError" in r.text and "nothere.pth" in r.message
    r = run_cli(capsys, "--debug", "fold", "nothere.pth")  # before the command too
    assert r.code == 2 and "Traceback" in r.text


# ------------------------------------------------------------------------ a fresh interpreter

def test_python_m_help(tmp_path):
    r = run_module(tmp_path, "--help")
    assert r.code == 0, r.text
    for command in ("fold", "verify", "inspect", "doctor"):
        assert command in r.out
    assert "Traceback" not in r.text


def test_python_m_bad_input(tmp_path):
    r = run_module(tmp_path, "fold", "nothere.pth", "-o", "out.pth")
    assert r.code == 2, r.text
    assert r.last_line == "FAILED"
    assert "Traceback" not in r.text
    assert "nothere.pth" in r.message and "no such file" in r.message
    assert list(tmp_path.iterdir()) == []


def test_python_m_verify(shared):
    r = run_module(shared["folder"], "verify", "train.pth", "deploy.pth", "--seed", "1")
    assert r.code == 0, r.text
    assert r.last_line == "PASSED"
    assert "seed 1" in r.out


def test_json_reports_stay_strict_json_when_a_figure_is_not_finite(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"rel_l2": float("nan"), "max": [float("inf"), -float("inf"), 1.5], "shape": (2, 3)})

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    report = json.loads(path.read_text(), parse_constant=refuse)
    assert report == {"rel_l2": "NaN", "max": ["Infinity", "-Infinity", 1.5], "shape": [2, 3]}


def test_version_prints_the_version_alone(capsys):
    import xvol_export

    r = run_cli(capsys, "--version")
    assert r.code == 0 and r.out == f"xvol {xvol_export.__version__}\n", r.text
