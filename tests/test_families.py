"""The block-family registry: every registered family passes the conformance kit; the walker, per-block
verification, the profiler, the export's structural check and the INT8 exclusions find families through it;
third-party families register in code and through the ``xvol.families`` entry point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from xvol_export.fold import fold
from xvol_export.fold.family import (
    BlockFamily,
    FoldContext,
    block_types,
    deploy_family,
    families,
    get_family,
    register_family,
    training_family,
)
from xvol_export.testing import check_family, randomize_batchnorm

from mixed_models import FamiliesNet

BUILT_IN = ["xvolution", "repvgg", "acb", "dbb", "mobileone", "dilated_reparam"]


pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs: one thread is faster


def mixed_net() -> FamiliesNet:
    torch.manual_seed(0)
    return randomize_batchnorm(FamiliesNet(), seed=3).eval()


def test_the_built_in_families_register_in_order_x_volution_first():
    assert [f.name for f in families()][:len(BUILT_IN)] == BUILT_IN


@pytest.mark.parametrize("family", families(), ids=lambda f: f.name)
def test_every_registered_family_passes_the_conformance_kit(family):
    held = check_family(family)
    assert held and all("rel L2" in line for line in held)


def test_the_conformance_kit_catches_a_wrong_fold():
    repvgg = get_family("repvgg")

    def dropping_the_identity(block, context):
        deploy = repvgg.fold(block, context)
        with torch.no_grad():
            deploy.rbr_reparam.bias.add_(1e-6)  # a tiny error no rounding explains
        return deploy

    broken = BlockFamily(**{**repvgg.__dict__, "name": "broken_repvgg", "fold": dropping_the_identity})
    with pytest.raises(AssertionError, match="rel L2"):
        check_family(broken, repvgg.examples()[0])


def test_the_conformance_kit_catches_a_wrong_graph_count():
    """A family that says its deploy block becomes two Conv nodes when its graph has one fails the ONNX check."""
    acb = get_family("acb")
    miscounted = BlockFamily(**{**acb.__dict__, "name": "miscounted_acb", "graph_convs": lambda deploy: 2})
    with pytest.raises(AssertionError, match="holds 1 Conv node.*counts 2"):
        check_family(miscounted, acb.examples()[0])


def test_a_family_must_not_take_types_of_another(monkeypatch):
    repvgg = get_family("repvgg")
    with pytest.raises(ValueError, match="belong.*repvgg"):
        register_family(BlockFamily(**{**repvgg.__dict__, "name": "copycat"}))
    with pytest.raises(ValueError, match="registered already"):
        register_family(BlockFamily(**{**repvgg.__dict__, "training_types": (nn.Conv2d,)}))


def test_the_walker_folds_every_family_in_one_model_and_leaves_the_input_alone():
    model = mixed_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    deploy, report = fold(model.double(), input_shape=(1, 3, 11, 13))
    assert all(torch.equal(before[k].double() if v.is_floating_point() else before[k], v)
               for k, v in model.state_dict().items())
    assert sorted(b.family for b in report.blocks) == sorted(BUILT_IN)
    assert not any(training_family(m) for m in deploy.modules())
    assert {f["kind"] for f in report.fused} == {"conv_bn", "linear_bn"}
    assert report.remaining_batchnorms == ["post_bn"] and [e["name"] for e in report.left] == ["post_bn"]
    with torch.no_grad():
        expected, got = model(x.double()), deploy(x.double())
    assert float((got - expected).norm() / expected.norm()) < 1e-12
    assert set(report.plan.blocks) == {f"blocks.{i}" for i in range(6)}
    json.dumps(report.plan.to_dict())  # JSON-plain: it goes into the checkpoint header


def test_per_block_verification_and_profile_cover_every_family():
    from xvol_export.fold.profile import profile_model
    from xvol_export.inputs import InputData
    from xvol_export.verify import Reference, verify

    model = mixed_net()
    deploy, report = fold(model, input_shape=(1, 3, 12, 12))
    data = InputData(torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2)), None, "random")
    check = verify(Reference(model, data, "training form"), deploy, "deploy form")
    assert check.passed, check.failure_summary()
    assert sorted(b.name for b in check.blocks) == [f"blocks.{i}" for i in range(6)]
    assert any(k.endswith("<extra>") for k in profile_model(deploy, (1, 3, 12, 12)).macs)  # the attention's
    assert report.macs_after < report.macs_before


def test_export_structural_check_counts_every_family_deploy_conv(tmp_path):
    from xvol_export.export import onnx_graph
    from xvol_export.export.structure import planned_convs

    deploy, _ = fold(mixed_net(), input_shape=(1, 3, 12, 12))
    graph = onnx_graph.export_onnx(deploy.float(), (1, 3, 12, 12))
    convs = sum(node.op_type == "Conv" for node in graph.graph.node)
    assert convs == planned_convs(deploy)
    assert all(deploy_family(m) is None or isinstance(m, block_types()) for m in deploy.modules())


def test_int8_keeps_what_families_ask_for_in_float():
    from xvol_export.export import onnx_graph
    from xvol_export.export.precision import int8_float_nodes
    from xvol_export.fold import set_runtime_options
    from xvol_export.fold.families.xvolution import shift_conv_names

    deploy, _ = fold(mixed_net(), input_shape=(1, 3, 12, 12))
    deploy = set_runtime_options(deploy, aggregate="convs")
    graph = onnx.load_from_string(onnx_graph.export_onnx(deploy.float(), (1, 3, 12, 12)).SerializeToString())
    from xvol_export.export.int8 import named_nodes

    graph = named_nodes(graph)
    assert int8_float_nodes(graph) == shift_conv_names(graph) and len(shift_conv_names(graph)) == 2


def test_runtime_options_come_from_the_family_rule():
    from xvol_export.fold import RuntimeTarget, runtime_options

    deploy, _ = fold(mixed_net(), input_shape=(1, 3, 12, 12))
    assert runtime_options(deploy, RuntimeTarget("onnxruntime", "cpu", 1)) == {"dilated_conv": "direct",
                                                                               "aggregate": "convs"}
    assert runtime_options(deploy, RuntimeTarget("torch", "cpu", 8))["dilated_conv"] == "phases"
    with pytest.raises(ValueError, match="unknown runtime option"):
        fold(mixed_net(), warp_speed="on")


PLUGIN = '''
from torch import nn

from xvol_export.fold.family import BlockFamily
from xvol_export.fold.arithmetic import add_branches, fuse_bn, pad_kernel
from xvol_export.fold.arithmetic import bn_affine64


class TwoBranch(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.big, self.big_bn = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.small, self.small_bn = nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.big_bn(self.big(x)) + self.small_bn(self.small(x))


class TwoBranchDeploy(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def fold(block, context):
    k3, b3 = fuse_bn(block.big.weight.double(), None, *bn_affine64(block.big_bn))
    k1, b1 = fuse_bn(block.small.weight.double(), None, *bn_affine64(block.small_bn))
    kernel, bias = add_branches((k3, b3), (pad_kernel(k1, 3), b1))
    deploy = TwoBranchDeploy(block.big.in_channels).double()
    deploy.conv.weight.data.copy_(kernel)
    deploy.conv.bias.data.copy_(bias)
    return deploy


def families():
    return [BlockFamily(
        name="two_branch", description="3x3+BN + 1x1+BN -> 3x3", training_types=(TwoBranch,),
        deploy_types=(TwoBranchDeploy,), fold=fold, deploy_config=lambda d: {"channels": d.conv.in_channels},
        build_deploy=lambda c: TwoBranchDeploy(**c), describe_training=lambda b: "3x3+BN + 1x1+BN",
        describe_deploy=lambda d: "3x3", examples=lambda: [TwoBranch()])]
'''


def test_a_package_adds_a_family_through_the_entry_point_group(tmp_path):
    """An installed package (here: a folder with a dist-info on the path) declares ``xvol.families``; xvol folds its
    blocks without any change of its own, and the conformance kit holds for it."""
    (tmp_path / "xvol_two_branch.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "xvol_two_branch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xvol-two-branch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xvol.families]\ntwo_branch = xvol_two_branch:families\n")
    script = textwrap.dedent('''
        import torch
        from xvol_export.fold import fold
        from xvol_export.fold.family import get_family
        from xvol_export.testing import check_family
        from xvol_export.testing import randomize_batchnorm
        import xvol_two_branch

        print(len(check_family(get_family("two_branch"))))
        model = randomize_batchnorm(torch.nn.Sequential(xvol_two_branch.TwoBranch(), torch.nn.ReLU()), seed=1).eval()
        deploy, report = fold(model)
        x = torch.randn(1, 4, 5, 6)
        print([b.family for b in report.blocks], float((deploy(x) - model(x)).abs().max()) < 1e-5)
    ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2", "['two_branch'] True"]  # the kit: its fold, then its walker


def test_no_module_but_the_families_names_x_volution():
    """The extension point is the registry: the walker, verification, profiling, export, INT8 and inspect look
    families up; only X-volution's own modules (its layers, its family rule, its fold arithmetic and cost model)
    and the reference networks name it (checkpoints reach its layout rule through the registry too)."""
    root = Path(__file__).resolve().parents[1] / "xvol_export"
    allowed = {"layers", "models", "fold/families/xvolution.py", "fold/cost.py", "fold/__init__.py", "__init__.py"}
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if relative in allowed or relative.split("/")[0] in allowed:
            continue
        if "XVolution" in path.read_text():
            offenders.append(relative)
    assert offenders == []


@pytest.mark.parametrize("family", families(), ids=lambda f: f.name)
def test_deploy_forms_are_told_apart_from_training_forms(family):
    for block in family.examples():
        context = FoldContext(layout=family.layouts[0] if family.layouts else "")
        deploy = family.fold(randomize_batchnorm(block, seed=0).eval().double(), context)
        assert training_family(block) is family and training_family(deploy) is None
        assert deploy_family(deploy) is family and deploy_family(block) is None


def test_a_registered_factory_need_not_take_form_arguments(monkeypatch, tmp_path):
    """Deploy checkpoints are rebuilt from the training skeleton and their plan, so a factory that only builds its
    training form registers, builds, folds and round-trips through a deploy checkpoint."""
    from xvol_export.checkpoint import load_model, save_checkpoint
    from xvol_export.errors import XvolError
    from xvol_export.models import create_model, registry

    def plain_mixed_net(width: int = 8):
        net = FamiliesNet()
        net.input_size = (3, 12, 12)
        return net

    monkeypatch.setitem(registry._REGISTRY, "plain_mixed_net", registry.ModelEntry("plain_mixed_net", plain_mixed_net))
    model = randomize_batchnorm(create_model("plain_mixed_net"), seed=1).eval()
    with pytest.raises(XvolError, match="training form only"):
        create_model("plain_mixed_net", deploy=True)
    deploy, _ = fold(model)
    loaded, ckpt = load_model(save_checkpoint(deploy, tmp_path / "mixed.deploy.pth"))
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert ckpt.folded and torch.allclose(loaded(x), model(x), rtol=1e-4, atol=1e-5)
