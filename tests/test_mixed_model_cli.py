"""A user's own mixed model end to end through the CLI: one block of every built-in family, a timm-style block
with only ``reparameterize()``, ordinary Conv/BN, ConvTranspose/BN and Linear/BN1d layers and a two-output head,
named ``--model tests.mixed_models:mixed_net`` from the repository root, its weights in a training script's dict
(``module.`` prefix, an EMA entry): ``xvol inspect``, ``xvol fold`` and ``xvol export --format onnx`` give a
verified graph without BatchNormalization, and so does the deploy checkpoint reloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from xvol_export.testing import randomize_batchnorm

import mixed_models
from helpers import run_cli

SPEC = "tests.mixed_models:mixed_net"  # as a user at the repository root names it
ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"blocks.0": "xvolution", "blocks.1": "repvgg", "blocks.2": "acb", "blocks.3": "dbb",
            "blocks.4": "mobileone", "blocks.5": "dilated_reparam"}
HOOKED = {"blocks.6": {"hook": "reparameterize", "mode": "in_place"}}
FUSED = {("conv_bn", "stem.0", "stem.1"), ("convtranspose_bn", "up", "up_bn"), ("conv_bn", "conv", "bn"),
         ("linear_bn", "fc", "fc_bn")}
OUTPUTS = ["output0", "output1"]


@dataclass
class Trained:
    """The training script's checkpoint and the two state dicts it holds (without the prefix)."""

    path: Path
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_thread")  # small convs: one thread is faster


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """``{"model": {"module." + k: v}, "model_ema": {...}, "epoch": 3}`` with non-default BatchNorm statistics;
    the EMA weights differ slightly everywhere, and by 0.25 in the dense head's bias (unchanged by the fold)."""
    torch.manual_seed(0)
    model = randomize_batchnorm(mixed_models.mixed_net(), seed=3, negative_gamma=0.25).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(4)
    ema = {k: v * (1 + 0.02 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v.clone()
           for k, v in weights.items()}
    ema["dense.bias"] = weights["dense.bias"] + 0.25
    path = tmp_path_factory.mktemp("mixed") / "train.pth"
    torch.save({"model": {"module." + k: v for k, v in weights.items()},
                "model_ema": {"module." + k: v for k, v in ema.items()}, "epoch": 3}, path)
    return Trained(path, weights, ema)


@pytest.fixture
def at_root(monkeypatch, tmp_path) -> Path:
    """The repository root as the current folder (where ``tests.mixed_models`` imports from); outputs go to
    ``tmp_path``, which is returned."""
    monkeypatch.chdir(ROOT)
    return tmp_path


def _ok(capsys, report: Path, *args) -> dict:
    """``xvol ARGS --json REPORT``, which must exit 0; the JSON report."""
    r = run_cli(capsys, *args, "--json", report)
    assert r.code == 0, r.text
    return json.loads(report.read_text())


def _passed_outputs(verification: dict) -> list[str]:
    assert verification["passed"], verification["failure"]
    return [c["name"] for c in verification["outputs"] if c["passed"]]


def _check_graph(path: Path, trained: Trained) -> None:
    """No BatchNormalization node; two outputs that ONNX Runtime computes as the training form does."""
    graph = onnx.load(path)
    assert not [n.name for n in graph.graph.node if n.op_type == "BatchNormalization"]
    assert {"ConvTranspose", "Gemm"} <= {n.op_type for n in graph.graph.node}
    assert [o.name for o in graph.graph.output] == OUTPUTS
    model = mixed_models.mixed_net().eval()
    model.load_state_dict(trained.weights)
    x = torch.randn(1, *mixed_models.INPUT_SIZE, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        expected = model.double()(x.double())
    got = ort.InferenceSession(path.as_posix(), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert [g.shape for g in got] == [(1, 5), (1, 2, 16, 16)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-4, atol=1e-5)


def test_inspect_lists_every_family_the_hook_block_and_the_fused_norms(trained, at_root, capsys):
    report = _ok(capsys, at_root / "inspect.json", "inspect", trained.path, "--model", SPEC)
    assert report["architecture"] == SPEC and report["folded"] is False
    assert report["input_shape"] == [1, *mixed_models.INPUT_SIZE]  # from pretrained_cfg
    assert {b["name"]: b["family"] for b in report["blocks"]} == {**FAMILIES, "blocks.6": "hook:reparameterize"}
    assert {(f["kind"], f["layer"], f["norm"]) for f in report["fused"]} == FUSED
    assert report["left"] == [] and report["batchnorms_after"] == 0
    assert any("'module.' prefix" in n for n in report["notes"]), report["notes"]
    assert any("'model_ema'" in n and "--ema" in n for n in report["notes"]), report["notes"]


def test_fold_export_and_the_deploy_checkpoint_reloaded(trained, at_root, capsys):
    deploy = at_root / "d.pth"
    fold = _ok(capsys, at_root / "fold.json", "fold", trained.path, "--model", SPEC, "--seed", "0", "-o", deploy)
    assert fold["written"] and fold["files"] == [str(deploy)]
    assert _passed_outputs(fold["verification"]) == OUTPUTS
    blocks = {b["name"]: b for b in fold["verification"]["blocks"]}
    assert set(blocks) == {*FAMILIES, *HOOKED}  # each family's block and the hook block, alone and in the network
    assert all(b["isolated"]["passed"] and b["in_network"]["passed"] for b in blocks.values())
    assert {b["name"]: b["family"] for b in fold["fold"]["blocks"]} == {**FAMILIES, "blocks.6": "hook:reparameterize"}
    assert fold["fold"]["remaining_batchnorms"] == []

    raw = torch.load(deploy, weights_only=True)
    assert raw["format_version"] == 2 and raw["folded"] is True and raw["architecture"] == SPEC
    plan = raw["fold_plan"]
    assert {name: block["family"] for name, block in plan["blocks"].items()} == FAMILIES
    assert plan["hooks"] == HOOKED
    assert {(f["kind"], f["layer"], f["norm"]) for f in plan["fused"]} == FUSED
    assert not [k for k in raw["state_dict"] if "running_" in k]
    assert torch.equal(raw["state_dict"]["dense.bias"], trained.weights["dense.bias"])  # not the EMA's

    for source, name in ((trained.path, "train.onnx"), (deploy, "deploy.onnx")):
        graph = at_root / name
        export = _ok(capsys, graph.with_suffix(".json"), "export", source, "--model", SPEC, "--format", "onnx",
                     "--seed", "0", "-o", graph)
        assert export["written"] and export["files"] == [str(graph)]
        assert export["graph"]["batchnorm_nodes"] == 0 and export["graph"]["conv_nodes"] == export["graph"][
            "conv_modules"]
        assert _passed_outputs(export["verification"]) == OUTPUTS
        if source == deploy:  # the deploy checkpoint is exported as it is, verified against itself
            assert export["fold"] is None and export["verification"]["reference"] == "deploy form"
        else:
            assert _passed_outputs(export["fold_verification"]) == OUTPUTS
        _check_graph(graph, trained)

    check = _ok(capsys, at_root / "verify.json", "verify", trained.path, deploy, "--model", SPEC, "--seed", "1")
    assert _passed_outputs(check) == OUTPUTS and set(FAMILIES) <= {b["name"] for b in check["blocks"]}


def test_ema_weights_are_the_ones_folded_with_ema(trained, at_root, capsys):
    deploy = at_root / "ema.pth"
    fold = _ok(capsys, at_root / "fold.json", "fold", trained.path, "--model", SPEC, "--ema", "--seed", "0",
               "-o", deploy)
    assert "using the EMA weights 'model_ema'" in fold["notes"], fold["notes"]
    assert _passed_outputs(fold["verification"]) == OUTPUTS
    raw = torch.load(deploy, weights_only=True)["state_dict"]
    assert torch.equal(raw["dense.bias"], trained.ema["dense.bias"])
    r = run_cli(capsys, "verify", trained.path, deploy, "--model", SPEC, "--ema", "--seed", "1")
    assert r.code == 0, r.text
    r = run_cli(capsys, "verify", trained.path, deploy, "--model", SPEC, "--seed", "1")  # against the plain weights
    assert r.code == 1 and "FAILED" in r.out, r.text
