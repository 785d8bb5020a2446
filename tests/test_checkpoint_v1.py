"""Format version 1 (``layouts`` instead of a fold plan): the files under ``tests/data/checkpoint_v1`` (written by
xvol 0.1.0) load, give the training form's stored outputs, and save again in version 2, which round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xvol_export.checkpoint import (
    FORMAT_VERSION,
    build_model,
    check_refold,
    is_folded,
    load_checkpoint,
    load_model,
    plan_layouts,
    save_checkpoint,
)
from xvol_export.errors import XvolError
from xvol_export.fold.plan import FoldPlan
from xvol_export.layers import XVolutionDeploy

DATA = Path(__file__).resolve().parent / "data" / "checkpoint_v1"
FILES = sorted(p.name for p in DATA.glob("*.pth"))
DEPLOY = {"tiny.deploy.pth": "split", "tiny.dense.deploy.pth": "dense"}
BLOCKS = {"layer2.0.conv1", "layer3.0.conv1"}


@pytest.fixture(scope="module")
def stored() -> tuple[torch.Tensor, torch.Tensor]:
    """The input and the training form's float64 output on it."""
    data = np.load(DATA / "tiny.outputs.npz")
    return torch.from_numpy(data["input"]), torch.from_numpy(data["output"])


def _run64(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.double()(x.double())


def _assert_close_to_fp32_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 weights run in float64: differs from the float64 fold of the training form by weight rounding only."""
    bound = 16 * torch.finfo(torch.float32).eps * ref.abs().max().item()
    error = (out - ref).abs().max().item()
    assert error <= bound, f"max error {error:.3g} > {bound:.3g}"


def test_the_files_are_there():
    assert FILES == sorted(["tiny.train.pth", *DEPLOY])
    assert FORMAT_VERSION == 2


@pytest.mark.parametrize("name", FILES)
def test_version_1_file_loads(name, stored):
    raw = torch.load(DATA / name, weights_only=True)
    assert raw["format_version"] == 1 and "layouts" in raw and "fold_plan" not in raw
    model, ckpt = load_model(DATA / name)
    assert ckpt.format_version == 1
    assert ckpt.architecture == "xvol_resnet_tiny"
    assert ckpt.folded is (name in DEPLOY)
    out = _run64(model, stored[0])
    if name in DEPLOY:
        assert ckpt.layouts == {block: DEPLOY[name] for block in BLOCKS}
        assert is_folded(model) and isinstance(model.xvol_fold_plan, FoldPlan)
        assert plan_layouts(model.xvol_fold_plan) == ckpt.layouts
        assert {n: m.layout for n, m in model.named_modules() if isinstance(m, XVolutionDeploy)} == ckpt.layouts
        _assert_close_to_fp32_rounding(out, stored[1])
    else:
        assert ckpt.layouts == {} and ckpt.plan is None and not is_folded(model)
        torch.testing.assert_close(out, stored[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", ["model", "checkpoint"])
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_saved_again_in_version_2_round_trips(tmp_path, name, source, suffix, stored):
    model, ckpt = load_model(DATA / name)
    fresh = load_checkpoint(DATA / name)  # no model built from it: its plan is worked out when it is saved
    path = save_checkpoint(model if source == "model" else fresh, tmp_path / f"again{suffix}")
    again, ckpt2 = load_model(path)
    assert ckpt2.format_version == 2 and ckpt2.folded is ckpt.folded
    assert ckpt2.layouts == ckpt.layouts and ckpt2.config == ckpt.config
    assert (ckpt2.plan is not None) is ckpt.folded
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)
        assert raw["format_version"] == 2 and "layouts" not in raw
        assert (raw["fold_plan"] is None) is (not ckpt.folded)
    assert set(again.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert torch.equal(_run64(again, stored[0]), _run64(model, stored[0]))


def test_version_1_deploy_checkpoint_keeps_its_layout(tmp_path):
    ckpt = load_checkpoint(DATA / "tiny.dense.deploy.pth")
    check_refold(ckpt, "dense")
    check_refold(ckpt, "auto")
    with pytest.raises(XvolError, match=r"already folded with dense for 2 block\(s\)"):
        check_refold(ckpt, "split")
    again = load_checkpoint(save_checkpoint(build_model(ckpt), tmp_path / "dense.pth"))
    with pytest.raises(XvolError, match=r"already folded with dense for 2 block\(s\)"):
        check_refold(again, "split")


def test_version_1_header_without_layouts_is_refused(tmp_path):
    raw = torch.load(DATA / "tiny.deploy.pth", weights_only=True)
    del raw["layouts"]
    torch.save(raw, tmp_path / "bad.pth")
    with pytest.raises(XvolError, match="layouts"):
        load_checkpoint(tmp_path / "bad.pth")
