"""Users' own models (``--model package.module:factory``): plain state dicts and training scripts' dicts, keys
reported by name, the other form's weights recognized, the input size only where declared, JSON-plain configs,
and code named in a file never imported unless the user names it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from xvol_export import create_model, fold
from xvol_export.checkpoint import (
    LoadOptions,
    build_model,
    is_folded,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from xvol_export.errors import XvolError
from xvol_export.forms import recognize_form
from xvol_export.models.spec import ModelSpec, config_problems, declared_input_size

import user_models
from helpers import randomize_bn, run_cli

SPEC = "user_models:tiny_net"
X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
TRIPWIRE = '''"""Imported only when a test names it: the import leaves a mark."""
import os

from torch import nn

os.environ["XVOL_TEST_TRIPWIRE"] = "imported"


def net(width: int = 4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
'''


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The user's training-form model, with non-default BatchNorm statistics."""
    torch.manual_seed(0)
    model = user_models.tiny_net()
    randomize_bn(model, torch.Generator().manual_seed(7))
    return model.eval()


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def _error(path, *words, **kwargs) -> str:
    with pytest.raises(XvolError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------- reading weights

@pytest.mark.parametrize("wrap, note", [
    (lambda sd: sd, None),
    (lambda sd: {"state_dict": sd, "epoch": 4}, None),
    (lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, None),
    (lambda sd: {"model_ema": sd, "epoch": 9}, "EMA"),
    (lambda sd: {"module." + k: v for k, v in sd.items()}, "'module.' prefix"),
    (lambda sd: {"state_dict": {"_orig_mod.module." + k: v for k, v in sd.items()}}, "'_orig_mod.module.' prefix"),
], ids=["plain", "state_dict", "model", "model_ema", "module-prefix", "compiled-ddp"])
def test_user_model_loads_from_any_state_dict_shape(work, trained, wrap, note):
    torch.save(wrap(trained.state_dict()), work / "sd.pth")
    model, ckpt = load_model(work / "sd.pth", model=SPEC)
    assert isinstance(model, user_models.TinyNet) and not model.training
    assert ckpt.architecture == SPEC and not ckpt.folded and not is_folded(model)
    assert model.xvol_arch == {"name": SPEC, "config": {"num_classes": 4, "width": 8}}
    assert torch.equal(_out(model), _out(trained))
    if note:
        assert any(note in n for n in ckpt.notes), ckpt.notes


def test_ema_weights_picked_with_use_ema(work, trained):
    sd = trained.state_dict()
    ema = {k: (v + 1 if k == "head.3.bias" else v) for k, v in sd.items()}
    torch.save({"state_dict": sd, "state_dict_ema": ema}, work / "script.pth")
    model, ckpt = LoadOptions(model=SPEC, use_ema=True).load(work / "script.pth")
    assert torch.equal(model.head[3].bias, ema["head.3.bias"])
    model, ckpt = LoadOptions(model=SPEC).load(work / "script.pth")
    assert torch.equal(model.head[3].bias, sd["head.3.bias"]) and any("use_ema=True" in n for n in ckpt.notes)


def test_model_kwargs_reach_the_factory(work):
    net = user_models.tiny_net(num_classes=7, width=4)
    torch.save(net.state_dict(), work / "sd.pth")
    model, ckpt = load_model(work / "sd.pth", model=SPEC, model_kwargs={"num_classes": 7, "width": 4})
    assert model.head[3].out_features == 7 and ckpt.config == {"num_classes": 7, "width": 4}
    _error(work / "sd.pth", "the weights do not match", "head.3.weight", "(7, 8)", "(4, 8)", model=SPEC,
           model_kwargs={"width": 4})


def test_missing_and_unexpected_keys_named(work, trained):
    sd = dict(trained.state_dict())
    del sd["conv.weight"], sd["block.rbr_1x1.bn.running_var"]
    sd["extra.scale"] = torch.ones(3)
    torch.save(sd, work / "sd.pth")
    message = _error(work / "sd.pth", "2 missing key(s)", "conv.weight", "block.rbr_1x1.bn.running_var",
                     "1 unexpected key(s)", "extra.scale", str(work / "sd.pth"), model=SPEC)
    assert "deploy" not in message


def test_deploy_form_state_dict_in_the_training_model_is_named(work, trained):
    deploy, _ = fold(trained)
    torch.save(deploy.state_dict(), work / "deploy_sd.pth")
    _error(work / "deploy_sd.pth", "holds the weights of a deploy (folded) form", "training form",
           "block.rbr_reparam.weight", "stem.0.bias", "stem.1.running_var", "xvol fold wrote", model=SPEC)


def test_deploy_form_of_a_registered_architecture_is_named(work):
    config = {"stages": [2, 3], "blocks_per_stage": 1, "num_classes": 4}
    train = create_model("xvol_resnet_tiny", **config).eval()
    deploy, _ = fold(train, layout="dense")
    torch.save(deploy.state_dict(), work / "bare.pth")
    _error(work / "bare.pth", "deploy (folded) form", "layer2.0.conv1.static.weight", model="xvol_resnet_tiny",
           model_kwargs=config)


def test_training_weights_under_a_deploy_header_are_named(work, trained):
    deploy, _ = fold(_with_arch(trained))
    path = save_checkpoint(deploy, work / "deploy.pth")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = trained.state_dict()
    torch.save(raw, work / "edited.pth")
    _error(work / "edited.pth", "holds the weights of the training form", "says it is folded",
           "block.rbr_dense.conv.weight", model=SPEC)


def test_recognize_form_tells_the_forms_apart(trained):
    deploy, _ = fold(trained)
    train_keys, deploy_keys = set(trained.state_dict()), set(deploy.state_dict())
    make = user_models.tiny_net
    assert recognize_form(make, train_keys, False, sorted(train_keys - deploy_keys),
                          sorted(deploy_keys - train_keys)) == "deploy"
    assert recognize_form(make, deploy_keys, True, sorted(deploy_keys - train_keys),
                          sorted(train_keys - deploy_keys)) == "training"
    assert recognize_form(make, train_keys, False, ["conv.weight"], ["other.weight"]) is None
    assert recognize_form(make, train_keys, False, ["conv.weight"], []) is None


def test_layernorm_model_is_not_a_folded_one(work):
    spec = "user_models:layernorm_net"
    model = ModelSpec(spec).build()
    assert not is_folded(model)
    torch.save(model.state_dict(), work / "ln.pth")
    loaded, ckpt = load_model(work / "ln.pth", model=spec)
    assert not ckpt.folded and not is_folded(loaded)
    assert loaded.input_size == (3, 16, 16)  # from default_cfg
    assert torch.equal(_out(loaded), _out(model))
    again = load_checkpoint(save_checkpoint(loaded, work / "ln.xvol.pth"), model=spec)
    assert not again.folded and again.plan is None
    deploy, _ = fold(loaded)  # nothing to fold: still a deploy model, with an empty plan
    assert is_folded(deploy) and deploy.xvol_fold_plan.empty
    folded = load_checkpoint(save_checkpoint(deploy, work / "ln.deploy.pth"), model=spec)
    assert folded.folded and folded.plan.empty
    assert torch.equal(_out(build_model(folded)), _out(model))


# ------------------------------------------------------------------------------- checkpoints of user models

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_user_model_checkpoints_round_trip_in_both_forms(work, trained, suffix):
    train_path = save_checkpoint(_with_arch(trained), work / f"t{suffix}")
    deploy, report = fold(_with_arch(trained))
    deploy_path = save_checkpoint(deploy, work / f"d{suffix}")
    for path, folded, reference in ((train_path, False, trained), (deploy_path, True, deploy)):
        model, ckpt = load_model(path, model=SPEC)
        assert ckpt.architecture == SPEC and ckpt.folded is folded and ckpt.format_version == 2
        assert ckpt.config == {"num_classes": 4, "width": 8}
        assert is_folded(model) is folded
        assert torch.equal(_out(model), _out(reference))
    model, ckpt = load_model(deploy_path, model=SPEC)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ckpt.plan.to_dict() == deploy.xvol_fold_plan.to_dict() == report.plan.to_dict()


def _with_arch(model: nn.Module) -> nn.Module:
    """``model`` as a ModelSpec builds it: with the spec and its resolved config recorded."""
    built = ModelSpec(SPEC).build()
    built.load_state_dict(model.state_dict())
    return built.eval()


def test_spec_named_in_a_file_is_not_imported_unless_given(work, monkeypatch):
    (work / "tripwire_models.py").write_text(TRIPWIRE)
    monkeypatch.delenv("XVOL_TEST_TRIPWIRE", raising=False)
    net = ModelSpec("tripwire_models:net").build()  # imported: named here, from the current folder
    assert os.environ.pop("XVOL_TEST_TRIPWIRE") == "imported"
    path = save_checkpoint(net, work / "trip.pth")
    torch.save({"arch": "tripwire_models:net", "state_dict": net.state_dict()}, work / "script.pth")
    monkeypatch.delitem(sys.modules, "tripwire_models")
    for file in (path, work / "script.pth"):
        message = _error(file, str(file), "tripwire_models:net", "model='tripwire_models:net'", "never imports")
        assert "XVOL_TEST_TRIPWIRE" not in os.environ and "tripwire_models" not in sys.modules, message
    _error(path, "tripwire_models:net", "you named 'user_models:tiny_net'", model=SPEC)
    assert "tripwire_models" not in sys.modules
    model, ckpt = load_model(path, model="tripwire_models:net")  # named: imported and built
    assert os.environ.get("XVOL_TEST_TRIPWIRE") == "imported" and ckpt.architecture == "tripwire_models:net"


def test_registered_name_in_a_file_still_needs_no_option(work):
    model = create_model("xvol_resnet_tiny", stages=[3], num_classes=4)
    torch.save({"arch": "xvol_resnet_tiny", "config": {"stages": [3], "num_classes": 4},
                "state_dict": model.state_dict()}, work / "script.pth")
    loaded, ckpt = load_model(work / "script.pth")
    assert ckpt.architecture == "xvol_resnet_tiny" and ckpt.config == {"stages": [3], "num_classes": 4}
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(_out(loaded, x), _out(model, x))


def test_non_json_default_is_refused_when_a_checkpoint_records_it(work):
    spec = "user_models:act_net"
    model = ModelSpec(spec).build()
    assert config_problems(model.xvol_arch["config"]) == [f"act_layer={nn.ReLU!r}"]
    torch.save(model.state_dict(), work / "sd.pth")
    loaded, _ = load_model(work / "sd.pth", model=spec)  # in memory: nothing to record, no problem
    before = _listing(work)
    with pytest.raises(XvolError) as info:
        save_checkpoint(loaded, work / "act.pth")
    message = str(info.value)
    for word in ("model='user_models:act_net'", "act_layer=", "ReLU", "JSON-plain", "model_kwargs", "wrapper"):
        assert word in message, message
    assert _listing(work) == before  # nothing written


# -------------------------------------------------------------------------------------------- input size

def test_input_size_is_only_what_the_model_declares():
    assert declared_input_size(user_models.tiny_net()) is None
    assert declared_input_size(user_models.tiny_net_cfg()) == (3, 16, 16)
    assert declared_input_size(user_models.layernorm_net()) == (3, 16, 16)
    assert declared_input_size(create_model("xvol_resnet_tiny")) == (3, 32, 32)
    assert ModelSpec("user_models:tiny_net_cfg").build().input_size == (3, 16, 16)
    assert not hasattr(ModelSpec(SPEC).build(), "input_size")


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.fixture
def plain_sd(work, trained) -> Path:
    torch.save(trained.state_dict(), work / "sd.pth")
    return work / "sd.pth"


def test_cli_inspect_of_a_user_state_dict(plain_sd, capsys):
    r = run_cli(capsys, "inspect", plain_sd.name, "--model", SPEC, "--input-shape", "1x3x16x16", "--json", "i.json")
    assert r.code == 0, r.text
    report = json.loads(Path("i.json").read_text())
    assert report["architecture"] == SPEC and report["input_shape"] == [1, 3, 16, 16]
    assert report["config"] == {"num_classes": 4, "width": 8}  # the factory's defaults, filled in
    assert report["conv_bn_pairs"] == 2 and [b["name"] for b in report["blocks"]] == ["block"]


def test_cli_without_an_input_size_names_the_option(plain_sd, capsys):
    for command in (["inspect", plain_sd.name], ["fold", plain_sd.name, "--seed", "0"]):
        before = _listing(plain_sd.parent)
        r = run_cli(capsys, *command, "--model", SPEC)
        assert r.code == 2, r.text
        assert "has no default input size" in r.message and "--input-shape" in r.message, r.message
        assert _listing(plain_sd.parent) == before


def test_cli_uses_the_pretrained_cfg_input_size(work, capsys):
    torch.save(user_models.tiny_net_cfg().state_dict(), work / "cfg.pth")
    r = run_cli(capsys, "inspect", "cfg.pth", "--model", "user_models:tiny_net_cfg", "--json", "i.json")
    assert r.code == 0, r.text
    assert json.loads(Path("i.json").read_text())["input_shape"] == [1, 3, 16, 16]


def test_cli_fold_of_a_user_model_and_its_deploy_checkpoint(plain_sd, capsys):
    r = run_cli(capsys, "fold", plain_sd.name, "--model", SPEC, "--input-shape", "2x3x16x16", "--seed", "0",
                "-o", "d.pth")
    assert r.code == 0, r.text
    raw = torch.load("d.pth", weights_only=True)
    assert raw["architecture"] == SPEC and raw["format_version"] == 2 and raw["folded"] is True
    assert raw["config"] == {"num_classes": 4, "width": 8} and set(raw["fold_plan"]["blocks"]) == {"block"}
    r = run_cli(capsys, "inspect", "d.pth", "--input-shape", "1x3x16x16")
    assert r.code == 2 and "--model user_models:tiny_net" in r.message and "never imports" in r.message, r.text
    r = run_cli(capsys, "inspect", "d.pth", "--model", "user_models:tiny_net_cfg")
    assert r.code == 2 and "holds a model built by 'user_models:tiny_net'" in r.message, r.text
    r = run_cli(capsys, "inspect", "d.pth", "--model", SPEC, "--input-shape", "1x3x16x16")
    assert r.code == 0, r.text


def test_cli_folds_a_block_through_its_own_hook_and_reloads_the_deploy_checkpoint(work, capsys):
    """A timm-style block xvol does not know is folded by its own reparameterize() on a copy; the deploy
    checkpoint's plan records the hook, and reloading it replays the hook on the meta skeleton."""
    from xvol_export.testing import randomize_batchnorm

    spec = "user_models:hooked_net"
    torch.manual_seed(0)
    torch.save(randomize_batchnorm(user_models.hooked_net(), seed=2).state_dict(), work / "hooked.pth")
    r = run_cli(capsys, "fold", "hooked.pth", "--model", spec, "--seed", "0", "-o", "hooked.deploy.pth")
    assert r.code == 0, r.text
    assert "hook:reparameterize" in r.out and "repvgg" in r.out
    plan = torch.load("hooked.deploy.pth", weights_only=True)["fold_plan"]
    assert plan["hooks"] == {"3": {"hook": "reparameterize", "mode": "in_place"}} and set(plan["blocks"]) == {"5"}
    assert {(f["kind"], f["layer"], f["norm"]) for f in plan["fused"]} == {("conv_bn", "0", "1")}
    r = run_cli(capsys, "verify", "hooked.pth", "hooked.deploy.pth", "--model", spec, "--seed", "1")
    assert r.code == 0, r.text


def test_cli_fold_of_a_non_json_default_writes_nothing(work, capsys):
    torch.save(user_models.act_net().state_dict(), work / "act.pth")
    before = _listing(work)
    r = run_cli(capsys, "fold", "act.pth", "--model", "user_models:act_net", "--seed", "0", "-o", "d.pth")
    assert r.code == 2, r.text
    assert "act_layer=" in r.message and "JSON-plain" in r.message, r.message
    assert _listing(work) == before


@pytest.mark.parametrize("args, words", [
    (["--model", "user_models:"], ["--model 'user_models:'", "package.module:factory"]),
    (["--model", "no_such_module_xyz:net"], ["cannot import module 'no_such_module_xyz'", "PYTHONPATH"]),
    (["--model", "user_models:nothing_here"], ["has no 'nothing_here'"]),
    (["--model", "user_models:NOT_CALLABLE"], ["'NOT_CALLABLE' is a int, not a function"]),
    (["--model", "user_models:not_a_model"], ["returned a dict, not a torch.nn.Module"]),
    (["--model", "user_models:broken"], ["building it with depth=2 failed", "RuntimeError", "not supported"]),
    (["--model", SPEC, "--model-kwargs", '{"depth": 3}'], ["does not take", "depth", "num_classes, width"]),
    (["--model", SPEC, "--model-kwargs", "[1, 2]"], ["--model-kwargs must be a JSON object"]),
    (["--model", SPEC, "--model-kwargs", "{width: 3}"], ["--model-kwargs is not valid JSON"]),
    (["--model", SPEC, "--model-kwargs", '{"deploy": true}'], ["deploy", "training form"]),
    (["--model", SPEC, "--arch", "xvol_resnet_tiny"], ["name different models"]),
    ([], ["plain state dict with no architecture name", "--model"]),
], ids=["syntax", "no-module", "no-attribute", "not-callable", "not-a-module", "factory-raises", "unknown-kwarg",
        "kwargs-list", "kwargs-json", "deploy-kwarg", "two-models", "no-model"])
def test_cli_bad_model_options_exit_2(plain_sd, capsys, args, words):
    before = _listing(plain_sd.parent)
    r = run_cli(capsys, "inspect", plain_sd.name, "--input-shape", "1x3x16x16", *args)
    assert r.code == 2, r.text
    assert "Traceback" not in r.text and "internal error" not in r.text, r.text
    for word in words:
        assert word in r.message, r.message
    assert _listing(plain_sd.parent) == before


def test_cli_state_dict_of_another_architecture_writes_nothing(plain_sd, capsys):
    before = _listing(plain_sd.parent)
    r = run_cli(capsys, "fold", plain_sd.name, "--model", "user_models:hooked_net", "--seed", "0", "-o", "d.pth")
    assert r.code == 2, r.text
    assert "missing" in r.message and "unexpected" in r.message and "stem.0.weight" in r.message, r.message
    assert _listing(plain_sd.parent) == before


def test_cli_identity_branch_with_mismatched_channels_is_refused(plain_sd, capsys):
    before = _listing(plain_sd.parent)
    r = run_cli(capsys, "fold", plain_sd.name, "--model", "user_models:identity_mismatch", "--input-shape",
                "1x3x16x16", "--seed", "0", "-o", "d.pth")
    assert r.code == 2, r.text
    assert "identity" in r.message and "channels" in r.message, r.message
    assert _listing(plain_sd.parent) == before


def test_cli_user_model_from_the_current_folder(work, capsys):
    (work / "mynet_here.py").write_text("from torch import nn\n\n\ndef build(width=4):\n"
                                        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width))\n")
    from importlib import import_module

    sys.path.insert(0, str(work))
    try:
        torch.save(import_module("mynet_here").build().state_dict(), work / "sd.pth")
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("mynet_here", None)
    r = run_cli(capsys, "inspect", "sd.pth", "--model", "mynet_here:build", "--input-shape", "1x3x8x8")
    sys.modules.pop("mynet_here", None)
    assert r.code == 0, r.text
    assert str(work) not in sys.path
