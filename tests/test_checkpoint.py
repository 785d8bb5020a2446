"""xvol_export.checkpoint: round trips in both forms and both formats, strict loading, bad files, atomic writes."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export import XVolution, XVolutionDeploy, create_model, fold
from xvol_export.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    build_model,
    is_folded,
    load_checkpoint,
    load_model,
    plan_layouts,
    save_checkpoint,
)
from xvol_export.errors import XvolError
from xvol_export.fold.plan import FoldPlan
from xvol_export.naming import named_as

from helpers import randomize_bn

ARCH = "xvol_resnet_tiny"
CONFIG = {"stages": [2, 3]}
BLOCKS = ["layer2.0.conv1", "layer2.1.conv1", "layer3.0.conv1", "layer3.1.conv1"]
SUFFIXES = [".pth", ".safetensors"]


@pytest.fixture(scope="module")
def models():
    """A training model with random BN statistics and its dense, split and mixed-layout deploy forms."""
    torch.manual_seed(0)
    train = create_model(ARCH, stages=(2, 3))
    randomize_bn(train, torch.Generator().manual_seed(11))
    train.eval()
    dense, _ = fold(train, layout="dense")
    split, _ = fold(train, layout="split")
    mixed = copy.deepcopy(split)
    mixed.layer2[1].conv1 = copy.deepcopy(dense.layer2[1].conv1)  # one dense block among split ones
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return {"train": train, "dense": dense, "split": split, "mixed": mixed, "x": x}


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _layouts(model: nn.Module) -> dict[str, str]:
    return {n: m.layout for n, m in model.named_modules() if isinstance(m, XVolutionDeploy)}


def _has_training_modules(model: nn.Module) -> bool:
    return any(isinstance(m, (XVolution, _BatchNorm)) for m in model.modules())


def _expect_error(path, *words, **kwargs) -> str:
    with pytest.raises(XvolError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return message


def _edited(tmp_path, models, edit, name="edited.pth"):
    """Save the training checkpoint, load its plain dict, ``edit`` it, torch.save it again."""
    good = tmp_path / "good.pth"
    save_checkpoint(models["train"], good)
    obj = torch.load(good, weights_only=True)
    edit(obj)
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_training_round_trip(tmp_path, models, suffix):
    path = save_checkpoint(models["train"], tmp_path / f"train{suffix}", metadata={"run": "test-7"})
    assert path == tmp_path / f"train{suffix}"
    model, ckpt = load_model(path)
    assert ckpt.architecture == ARCH
    assert ckpt.config["stages"] == [2, 3]
    assert ckpt.folded is False and ckpt.layouts == {}
    assert ckpt.metadata["run"] == "test-7" and "xvol_version" in ckpt.metadata
    assert ckpt.path == path
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.training
    assert not is_folded(model)
    assert torch.equal(_out(model, models["x"]), _out(models["train"], models["x"]))
    for key, value in models["train"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("form", ["dense", "split", "mixed"])
def test_deploy_round_trip(tmp_path, models, suffix, form):
    deploy = models[form]
    path = save_checkpoint(deploy, tmp_path / f"deploy{suffix}")
    model, ckpt = load_model(path)
    assert ckpt.folded is True
    assert ckpt.layouts == _layouts(deploy)
    assert set(ckpt.layouts) == set(BLOCKS)
    # rebuilt directly in deploy form, with the saved layout for every block
    assert is_folded(model)
    assert not _has_training_modules(model)
    assert _layouts(model) == ckpt.layouts
    assert torch.equal(_out(model, models["x"]), _out(deploy, models["x"]))


def test_layout_fixtures_are_what_the_tests_need(models):
    assert set(_layouts(models["dense"]).values()) == {"dense"}
    assert set(_layouts(models["split"]).values()) == {"split"}
    assert _layouts(models["mixed"]) == {b: ("dense" if b == "layer2.1.conv1" else "split") for b in BLOCKS}
    # a default deploy build is split: so a dense file only round-trips if the layouts are applied
    assert set(_layouts(create_model(ARCH, deploy=True, stages=(2, 3))).values()) == {"split"}


def test_reloaded_checkpoint_saves_identically(tmp_path, models):
    first = save_checkpoint(models["mixed"], tmp_path / "a.safetensors")
    model, ckpt = load_model(first)
    second = save_checkpoint(ckpt, tmp_path / "b.pth")
    again, ckpt2 = load_model(second)
    assert ckpt2.layouts == ckpt.layouts and ckpt2.folded
    assert torch.equal(_out(again, models["x"]), _out(models["mixed"], models["x"]))


@pytest.mark.parametrize("form", ["train", "mixed"])
def test_pth_is_a_plain_dict_for_weights_only_load(tmp_path, models, form):
    path = save_checkpoint(models[form], tmp_path / "model.pth")
    obj = torch.load(path, weights_only=True)
    assert isinstance(obj, dict)
    assert obj["format"] == FORMAT
    assert obj["architecture"] == ARCH
    assert obj["format_version"] == FORMAT_VERSION == 2
    assert obj["folded"] is (form != "train")
    assert "layouts" not in obj
    if form == "train":
        assert obj["fold_plan"] is None
    else:
        assert plan_layouts(FoldPlan.from_dict(obj["fold_plan"])) == _layouts(models[form])
    assert all(isinstance(v, torch.Tensor) for v in obj["state_dict"].values())
    json.dumps({k: v for k, v in obj.items() if k != "state_dict"})  # the rest is plain JSON data


def test_safetensors_header(tmp_path, models):
    from safetensors import safe_open

    path = save_checkpoint(models["mixed"], tmp_path / "model.safetensors")
    with safe_open(str(path), "pt") as handle:
        header = json.loads(handle.metadata()["xvol"])
        keys = set(handle.keys())
    assert header["format"] == FORMAT and header["folded"] is True
    assert plan_layouts(FoldPlan.from_dict(header["fold_plan"])) == _layouts(models["mixed"])
    assert keys == set(models["mixed"].state_dict())


def test_checkpoint_of_a_model_without_architecture_record(tmp_path):
    with pytest.raises(XvolError, match="create_model"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- strict loading

def test_missing_key_reported_by_name(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o["state_dict"].pop("layer2.1.conv2.weight"))
    message = _expect_error(path, "missing", "layer2.1.conv2.weight")
    assert "unexpected" not in message


def test_unexpected_key_reported_by_name(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o["state_dict"].update({"head.extra.weight": torch.zeros(3)}))
    message = _expect_error(path, "unexpected", "head.extra.weight")
    assert "missing" not in message


def test_wrong_shape_reported_by_name(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o["state_dict"].update({"fc.weight": torch.zeros(7, 64)}))
    _expect_error(path, "wrong shape", "fc.weight", "(7, 64)", "(10, 64)")


def test_every_problem_reported_together(tmp_path, models):
    def edit(obj):
        sd = obj["state_dict"]
        del sd["fc.bias"], sd["conv1.weight"]
        sd["extra.a"] = torch.zeros(1)
        sd["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)

    path = _edited(tmp_path, models, edit)
    _expect_error(path, "2 missing", "fc.bias", "conv1.weight", "1 unexpected", "extra.a", "layer1.0.conv1.weight")


def test_config_mismatch_reported_as_keys(tmp_path, models):
    # the weights of stages (2, 3) under a config of stages (3,): layer2's blocks do not match
    path = _edited(tmp_path, models, lambda o: o.update({"config": {**o["config"], "stages": [3]}}))
    _expect_error(path, "layer2.0.conv1")


# ------------------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nothere.pth", "no such file")


def test_folder(tmp_path):
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    _expect_error(folder, "folder")


def test_text_file_renamed_pth(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello world, not a checkpoint\n")
    _expect_error(path, "not a PyTorch checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    _expect_error(path)


def test_other_file_format_renamed_pth(tmp_path):
    import numpy as np

    path = tmp_path / "arrays.pth"
    with open(path, "wb") as handle:
        np.savez(handle, input=np.zeros(3))
    _expect_error(path, "not a PyTorch checkpoint")


def test_truncated_pth(tmp_path, models):
    good = save_checkpoint(models["train"], tmp_path / "good.pth")
    data = good.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated")


def test_truncated_safetensors(tmp_path, models):
    good = save_checkpoint(models["train"], tmp_path / "good.safetensors")
    data = good.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated")


def test_text_file_renamed_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello")
    _expect_error(path, "not a readable safetensors")


def test_safetensors_without_xvol_header(tmp_path, models):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in models["train"].state_dict().items()}, str(path))
    _expect_error(path, "without an xvol header")


def test_safetensors_with_damaged_header(tmp_path, models):
    from safetensors.torch import save_file

    path = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"xvol": "{not json"})
    _expect_error(path, "JSON")


def test_newer_format_version_refused(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o.update({"format_version": 99}))
    _expect_error(path, "99", "Upgrade")


def test_malformed_header_field(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o.update({"config": "stages=2,3"}))
    _expect_error(path, "config")


def test_unknown_architecture_names_the_file(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o.update({"architecture": "resnet_made_up"}))
    _expect_error(path, "resnet_made_up", "xvol_resnet_tiny")


def test_unknown_architecture(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o.update({"architecture": "resnet_made_up"}))
    with pytest.raises(XvolError) as info:
        load_model(path)
    assert "resnet_made_up" in str(info.value)
    assert "xvol_resnet_tiny" in str(info.value)  # lists the known ones


def test_bad_config_argument(tmp_path, models):
    path = _edited(tmp_path, models, lambda o: o.update({"config": {**o["config"], "depth_multiplier": 2}}))
    _expect_error(path, "depth_multiplier")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_named(tmp_path, models, value):
    def edit(obj):
        obj["state_dict"]["layer3.1.conv2.weight"][0, 0, 1, 1] = value

    path = _edited(tmp_path, models, edit)
    message = _expect_error(path, "NaN or Inf", "layer3.1.conv2.weight")
    assert "1 tensor(s)" in message


def test_nan_in_deploy_checkpoint_named(tmp_path, models):
    good = save_checkpoint(models["mixed"], tmp_path / "good.pth")
    obj = torch.load(good, weights_only=True)
    obj["state_dict"]["layer2.1.conv1.static.bias"][3] = float("nan")
    path = tmp_path / "nan_deploy.pth"
    torch.save(obj, path)
    _expect_error(path, "layer2.1.conv1.static.bias")


def test_negative_running_variance_names_the_batchnorm(tmp_path, models):
    def edit(obj):
        obj["state_dict"]["layer1.1.bn2.running_var"][5] = -0.5

    path = _edited(tmp_path, models, edit)
    _expect_error(path, "negative", "layer1.1.bn2.running_var")


def test_pickled_whole_module_refused(tmp_path, models):
    path = tmp_path / "whole.pth"
    torch.save(models["train"], path)
    _expect_error(path, "trust_pickle=True")


def test_pickled_whole_module_loads_when_trusted(tmp_path, models):
    path = tmp_path / "whole.pth"
    torch.save(models["train"], path)
    model, ckpt = load_model(path, trust_pickle=True)
    assert ckpt.architecture == ARCH
    assert torch.equal(_out(model, models["x"]), _out(models["train"], models["x"]))


def test_pickled_foreign_module_refused_even_when_trusted(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    _expect_error(path, "Sequential", trust_pickle=True)


# ------------------------------------------------------------------------------ bare state dicts

def test_bare_state_dict_needs_arch(tmp_path, models):
    path = tmp_path / "bare.pth"
    torch.save(models["train"].state_dict(), path)
    _expect_error(path, "arch='NAME'", "xvol_resnet_tiny")


def test_messages_name_the_callers_settings(tmp_path, models):
    """Python parameters by default; a front end's own names (the CLI's flags) where it gives them."""
    path = tmp_path / "bare.pth"
    torch.save(models["train"].state_dict(), path)
    _expect_error(path, "model='NAME'", "model_kwargs for its arguments")
    with named_as({"model": "--model", "model_kwargs": "--model-kwargs"}):
        message = _expect_error(path, "--model NAME", "--model-kwargs for its arguments")
    assert "arch='NAME'" in message  # a setting the front end does not name keeps its Python name


def test_bare_state_dict_with_arch_and_config(tmp_path, models):
    path = tmp_path / "bare.pth"
    torch.save(models["train"].state_dict(), path)
    model, ckpt = load_model(path, arch=ARCH, config=CONFIG)
    assert ckpt.architecture == ARCH and not ckpt.folded
    assert torch.equal(_out(model, models["x"]), _out(models["train"], models["x"]))


def test_bare_state_dict_with_arch_but_wrong_config_names_keys(tmp_path, models):
    path = tmp_path / "bare.pth"
    torch.save(models["train"].state_dict(), path)
    _expect_error(path, "layer2.0.conv1", arch=ARCH)  # default config: X-volution in stage 3 only


@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod.module."])
def test_prefixed_state_dict_loads_with_a_note(tmp_path, models, prefix):
    path = tmp_path / "ddp.pth"
    torch.save({prefix + k: v for k, v in models["train"].state_dict().items()}, path)
    model, ckpt = load_model(path, arch=ARCH, config=CONFIG)
    assert any(prefix in note for note in ckpt.notes), ckpt.notes
    assert torch.equal(_out(model, models["x"]), _out(models["train"], models["x"]))


def test_training_script_dict_with_ema(tmp_path, models):
    sd = models["train"].state_dict()
    ema = {k: (v + 1 if k == "fc.bias" else v) for k, v in sd.items()}
    path = tmp_path / "train_script.pth"
    torch.save({"epoch": 3, "state_dict": sd, "state_dict_ema": ema, "arch": ARCH, "config": CONFIG}, path)
    model, ckpt = load_model(path)
    assert any("use_ema=True" in note for note in ckpt.notes)
    assert torch.equal(model.fc.bias, sd["fc.bias"])
    model, ckpt = load_model(path, use_ema=True)
    assert torch.equal(model.fc.bias, ema["fc.bias"])


def test_arch_that_contradicts_the_file(tmp_path, models):
    path = save_checkpoint(models["train"], tmp_path / "train.pth")
    _expect_error(path, "xvol_resnet18", arch="xvol_resnet18")


# --------------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_existing_file_not_overwritten_without_force(tmp_path, models, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"previous contents")
    with pytest.raises(XvolError) as info:
        save_checkpoint(models["train"], path)
    assert str(path) in str(info.value) and "--force" in str(info.value)
    assert path.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    save_checkpoint(models["train"], path, force=True)
    assert load_checkpoint(path).architecture == ARCH
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_successful_save_leaves_only_the_file(tmp_path, models, suffix):
    save_checkpoint(models["mixed"], tmp_path / f"deploy{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"deploy{suffix}"]


def test_missing_output_folder(tmp_path, models):
    path = tmp_path / "no" / "such" / "model.pth"
    with pytest.raises(XvolError) as info:
        save_checkpoint(models["train"], path)
    assert str(path.parent) in str(info.value) and "does not exist" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_output_path_is_a_folder(tmp_path, models):
    (tmp_path / "out.pth").mkdir()
    with pytest.raises(XvolError, match="folder"):
        save_checkpoint(models["train"], tmp_path / "out.pth", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pth"]
    assert list((tmp_path / "out.pth").iterdir()) == []


def test_failed_serialization_leaves_no_temporary_file(tmp_path, models):
    ckpt = load_checkpoint(save_checkpoint(models["train"], tmp_path / "good.pth"))
    ckpt.state_dict["not_a_tensor"] = "text"  # the write fails half-way, inside the temporary file
    with pytest.raises(AttributeError):
        save_checkpoint(ckpt, tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pth"]


def test_metadata_of_any_type_is_stored_as_plain_json(tmp_path, models):
    path = save_checkpoint(models["train"], tmp_path / "meta.pth",
                           metadata={"torch": torch.__version__, "path": tmp_path, "nested": {"n": 3}})
    raw = torch.load(path, weights_only=True)  # a TorchVersion or Path would make this refuse the file
    assert raw["metadata"]["torch"] == str(torch.__version__)
    assert raw["metadata"]["path"] == str(tmp_path)
    assert raw["metadata"]["nested"] == {"n": 3}


def test_build_model_from_loaded_checkpoint(tmp_path, models):
    ckpt = load_checkpoint(save_checkpoint(models["mixed"], tmp_path / "deploy.pth"))
    model = build_model(ckpt)
    assert not model.training
    assert torch.equal(_out(model, models["x"]), _out(models["mixed"], models["x"]))


def test_written_files_get_the_usual_permissions(tmp_path, models):
    mask = os.umask(0o022)
    try:
        path = save_checkpoint(models["train"], tmp_path / "perm.pth")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


# -------------------------------------------------------------------------------- format version 2: fold plans

def _deploy_edited(tmp_path, models, edit, name="edited.pth"):
    """Save the mixed deploy checkpoint, ``edit`` its plain dict, torch.save it again."""
    obj = torch.load(save_checkpoint(models["mixed"], tmp_path / "good_deploy.pth"), weights_only=True)
    edit(obj)
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_deploy_checkpoint_rebuilds_from_the_training_skeleton_and_its_plan(tmp_path, models):
    deploy = models["mixed"]
    path = save_checkpoint(deploy, tmp_path / "deploy.pth")
    raw = torch.load(path, weights_only=True)
    plan = FoldPlan.from_dict(raw["fold_plan"])
    assert set(plan.blocks) == set(BLOCKS) and {b["family"] for b in plan.blocks.values()} == {"xvolution"}
    assert {(f["layer"], f["norm"]) for f in plan.fused} >= {("conv1", "bn1"), ("layer1.0.conv1", "layer1.0.bn1")}
    model, ckpt = load_model(path)
    assert ckpt.plan.to_dict() == raw["fold_plan"] and ckpt.format_version == 2
    assert model.xvol_fold_plan.to_dict() == raw["fold_plan"]
    assert model.xvol_arch == deploy.xvol_arch and model.input_size == deploy.input_size
    assert set(model.state_dict()) == set(deploy.state_dict())


def test_plan_follows_blocks_changed_after_the_fold(tmp_path, models):
    # "mixed" is a copy of the split fold with one block swapped for its dense form: the plan says what it is now
    ckpt = load_checkpoint(save_checkpoint(models["mixed"], tmp_path / "mixed.pth"))
    assert ckpt.plan.blocks["layer2.1.conv1"]["config"]["layout"] == "dense"
    stale = copy.deepcopy(models["split"])
    stale.layer2[0].conv1 = nn.Conv2d(16, 32, 3)
    with pytest.raises(XvolError, match=r"block 'layer2.0.conv1' as a xvolution deploy block, but it is Conv2d"):
        save_checkpoint(stale, tmp_path / "stale.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.pth"]


def test_deploy_model_built_directly_gets_a_plan(tmp_path, models):
    """``create_model(deploy=True)`` carries no plan: it is worked out from the training form's fold."""
    deploy = create_model(ARCH, deploy=True, stages=(2, 3))
    assert is_folded(deploy) and not hasattr(deploy, "xvol_fold_plan")
    deploy.load_state_dict(models["split"].state_dict())
    model, ckpt = load_model(save_checkpoint(deploy, tmp_path / "direct.pth"))
    assert ckpt.folded and set(ckpt.layouts.values()) == {"split"}
    assert ckpt.plan.fused == models["split"].xvol_fold_plan.fused
    assert torch.equal(_out(model, models["x"]), _out(models["split"], models["x"]))


def test_non_persistent_buffers_of_a_deploy_block_are_rebuilt(tmp_path, models):
    deploy, _ = fold(models["train"], layout="split", aggregate="convs")
    assert any(n.endswith("k_shift_kernel") for n, _ in deploy.named_buffers())
    model, ckpt = load_model(save_checkpoint(deploy, tmp_path / "convs.pth"))
    assert not any(t.is_meta for t in model.buffers())
    torch.testing.assert_close(_out(model, models["x"]), _out(deploy, models["x"]), rtol=0, atol=0)


def test_models_without_batchnorm_are_not_folded():
    assert not is_folded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(4 * 36)))
    assert not is_folded(create_model(ARCH, stages=(2, 3)))
    assert is_folded(create_model(ARCH, stages=(2, 3), deploy=True))


@pytest.mark.parametrize("edit, words", [
    (lambda o: o.pop("fold_plan"), ["fold_plan", "missing or malformed"]),
    (lambda o: o.update(fold_plan=None), ["folded", "fold_plan is null"]),
    (lambda o: o.update(fold_plan=[1, 2]), ["fold_plan is malformed", "list, not a mapping"]),
    (lambda o: o["fold_plan"].update(version=7), ["fold_plan is malformed", "version 7"]),
    (lambda o: o["fold_plan"].update(blocks=["layer2.0.conv1"]), ["fold_plan is malformed", "blocks"]),
    (lambda o: o["fold_plan"]["fused"].append({"kind": "conv_gn", "layer": "a", "norm": "b"}),
     ["fold_plan is malformed", "fused"]),
    (lambda o: o["fold_plan"]["blocks"].update({"layer9.conv": o["fold_plan"]["blocks"]["layer2.0.conv1"]}),
     ["fold plan does not fit", "layer9.conv"]),
    (lambda o: o["fold_plan"]["blocks"]["layer2.0.conv1"].update(family="hexvolution"),
     ["fold plan does not fit", "hexvolution"]),
    (lambda o: o["fold_plan"]["blocks"]["layer2.0.conv1"]["config"].update(layout="diagonal"),
     ["fold plan does not fit", "diagonal"]),
    (lambda o: o["fold_plan"]["fused"].append({"kind": "conv_bn", "layer": "conv1", "norm": "no.such.bn"}),
     ["fold plan does not fit", "no.such.bn"]),
    (lambda o: o.update(folded=False), ["holds a fold_plan but says it is not folded"]),
], ids=["no-plan", "null-plan", "list", "version", "blocks", "fusion-kind", "unknown-block", "unknown-family",
        "bad-config", "unknown-norm", "plan-on-training"])
def test_malformed_fold_plan_is_refused_naming_the_file(tmp_path, models, edit, words):
    path = _deploy_edited(tmp_path, models, edit)
    _expect_error(path, *words)


def test_deploy_weights_under_a_training_header_are_named(tmp_path, models):
    def edit(obj):
        obj.update(folded=False, fold_plan=None)

    path = _deploy_edited(tmp_path, models, edit)
    _expect_error(path, "holds the weights of a deploy (folded) form", "layer2.0.conv1.conv.bias", "conv1.bias")


# ------------------------------------------------------- damaged bytes: CRC-32 and the weights' sha256 (issue 17)

def _flip_low_byte_of(path, member_suffix: str) -> None:
    """Flip the lowest byte of the first float in the archive member ending with ``member_suffix``: the value stays
    finite and the archive readable, only its bytes are not the ones written (torch.load does not notice)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_length + extra_length] ^= 0x01  # the first byte of the member's data
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_pth_member_is_refused_as_damaged(tmp_path, models):
    """torch.load ignores the CRC-32 that torch.save records: a flipped bit in a tensor loaded and folded silently."""
    path = save_checkpoint(models["train"], tmp_path / "model.pth")
    _flip_low_byte_of(path, "/data/0")
    before = sorted(p.name for p in tmp_path.iterdir())
    _expect_error(path, "is damaged", "data/0", "CRC-32", "Copy or download it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_weights_sha256_is_recorded_and_checked(tmp_path, models, suffix):
    """save_checkpoint records the sha256 of the tensors (sorted keys, dtype and shape included) in the header; a
    file whose weights differ (here a tensor re-written with a fresh CRC, or a safetensors file, which has none) is
    refused as damaged; without the record (files saved before it) nothing is checked."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from xvol_export.checkpoint import WEIGHTS_HASH
    from xvol_export.integrity import state_dict_sha256

    model = models["mixed"]
    path = save_checkpoint(model, tmp_path / f"model{suffix}")
    expected = state_dict_sha256(model.state_dict())
    if suffix == ".pth":
        header = torch.load(path, weights_only=True)
        state_dict = header.pop("state_dict")
    else:
        with safe_open(str(path), "pt") as handle:
            header = json.loads(handle.metadata()["xvol"])
            state_dict = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
    assert header[WEIGHTS_HASH] == expected
    assert load_checkpoint(path).weights_sha256 == expected

    def write(header: dict, edited_path) -> None:
        if suffix == ".pth":
            torch.save({**header, "state_dict": state_dict}, edited_path)
        else:
            save_file(state_dict, str(edited_path), metadata={"xvol": json.dumps(header)})

    state_dict["fc.bias"] = state_dict["fc.bias"].clone()
    state_dict["fc.bias"][0] += 1e-3  # finite, the right shape and dtype: only the hash can tell
    write(header, tmp_path / f"edited{suffix}")
    _expect_error(tmp_path / f"edited{suffix}", "is damaged", "sha256", "save_checkpoint")

    write({k: v for k, v in header.items() if k != WEIGHTS_HASH}, tmp_path / f"old{suffix}")
    _, ckpt = load_model(tmp_path / f"old{suffix}")  # no record: loads, no note
    assert ckpt.weights_sha256 is None and ckpt.notes == []

    write({**header, WEIGHTS_HASH: "not a hash"}, tmp_path / f"bad{suffix}")
    _expect_error(tmp_path / f"bad{suffix}", "state_dict_sha256 is 'not a hash'", "64 hex digits")


def test_the_weights_sha256_ignores_key_order_and_strides_but_not_dtype_or_shape():
    from xvol_export.integrity import state_dict_sha256

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = state_dict_sha256({"a": weight, "b": torch.ones(2)})
    assert state_dict_sha256({"b": torch.ones(2), "a": weight.t().contiguous().t()}) == base
    assert state_dict_sha256({"a": weight.double(), "b": torch.ones(2)}) != base
    assert state_dict_sha256({"a": weight.reshape(3, 2), "b": torch.ones(2)}) != base
    assert state_dict_sha256({"a": weight, "c": torch.ones(2)}) != base
