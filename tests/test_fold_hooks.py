"""Blocks folded through their own re-parameterization method (``xvol_export.fold.hooks``): which hook a block
offers, folding with it (in place or returned), and replaying it on a meta-device skeleton."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xvol_export.fold.conv_bn import fuse_norms
from xvol_export.fold.hooks import fold_with_hook, hook_of, replay_hook
from xvol_export.fold.model import apply_plan
from xvol_export.fold.plan import FoldPlan
from xvol_export.layers.repvgg import RepVGGBlock

from helpers import assert_unchanged, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs: one thread is faster


# ------------------------------------------------------------- blocks written the way third-party code bases write them


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


def branch_kernel_bias(conv: nn.Conv2d | None, bn: nn.BatchNorm2d, kernel: torch.Tensor | None = None):
    """The usual third-party ``_fuse_bn_tensor``: ``(W * gamma / std, beta - mean * gamma / std)``."""
    weight = conv.weight if conv is not None else kernel
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    return weight * t, bn.bias - bn.running_mean * bn.weight / std


def identity_kernel(channels: int, groups: int, k: int, like: torch.Tensor) -> torch.Tensor:
    kernel = torch.zeros(channels, channels // groups, k, k, dtype=like.dtype, device=like.device)
    kernel[torch.arange(channels), torch.arange(channels) % (channels // groups), k // 2, k // 2] = 1
    return kernel


class TimmStyleBlock(nn.Module):
    """timm's MobileOneBlock pattern: ``reparameterize()`` builds ``reparam_conv`` on the default device, sets its
    ``.data``, deletes the branches and returns None; forward switches on ``reparam_conv``."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, branches: int = 2):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
        self.reparam_conv = None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList(conv_bn(cin, cout, k, stride, k // 2, groups) for _ in range(branches))
        self.conv_scale = conv_bn(cin, cout, 1, stride, 0, groups)
        self.act = nn.ReLU()

    def forward(self, x):
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        out = self.conv_scale(x) + sum(branch(x) for branch in self.conv_kxk)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    def _get_kernel_bias(self):
        kernel, bias = branch_kernel_bias(self.conv_scale.conv, self.conv_scale.bn)
        pad = self.k // 2
        kernel = F.pad(kernel, [pad, pad, pad, pad])
        if self.identity is not None:
            k_id, b_id = branch_kernel_bias(None, self.identity, identity_kernel(self.cin, self.groups, self.k, kernel))
            kernel, bias = kernel + k_id, bias + b_id
        for branch in self.conv_kxk:
            k_b, b_b = branch_kernel_bias(branch.conv, branch.bn)
            kernel, bias = kernel + k_b, bias + b_b
        return kernel, bias

    def reparameterize(self):
        if self.reparam_conv is not None:
            return
        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.k // 2, groups=self.groups,
                                      bias=True)
        self.reparam_conv.weight.data = kernel
        self.reparam_conv.bias.data = bias
        for para in self.parameters():
            para.detach_()
        self.__delattr__("conv_kxk")
        self.__delattr__("conv_scale")
        if hasattr(self, "identity"):
            self.__delattr__("identity")


class MMStyleBlock(nn.Module):
    """mmpretrain's RepVGGBlock pattern: ``switch_to_deploy()`` in place, behind a ``deploy`` flag."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.channels, self.stride, self.deploy = channels, stride, False
        self.branch_3x3 = conv_bn(channels, channels, 3, stride, 1)
        self.branch_1x1 = conv_bn(channels, channels, 1, stride, 0)
        self.branch_norm = nn.BatchNorm2d(channels) if stride == 1 else None
        self.act = nn.SiLU()

    def forward(self, x):
        if self.deploy:
            return self.act(self.branch_reparam(x))
        out = self.branch_3x3(x) + self.branch_1x1(x)
        return self.act(out + self.branch_norm(x) if self.branch_norm is not None else out)

    def switch_to_deploy(self):
        if self.deploy:
            return
        k3, b3 = branch_kernel_bias(self.branch_3x3.conv, self.branch_3x3.bn)
        k1, b1 = branch_kernel_bias(self.branch_1x1.conv, self.branch_1x1.bn)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.branch_norm is not None:
            k_id, b_id = branch_kernel_bias(None, self.branch_norm, identity_kernel(self.channels, 1, 3, kernel))
            kernel, bias = kernel + k_id, bias + b_id
        self.branch_reparam = nn.Conv2d(self.channels, self.channels, 3, self.stride, 1, bias=True)
        self.branch_reparam.weight.data = kernel
        self.branch_reparam.bias.data = bias
        for name in ("branch_3x3", "branch_1x1", "branch_norm"):
            delattr(self, name)
        self.deploy = True


class RebuildsAndReturns(MMStyleBlock):
    """Rebuilds itself in place and returns its kernel too: the rebuilt block (with its activation) is the deploy."""

    def switch_to_deploy(self):
        super().switch_to_deploy()
        return self.branch_reparam.weight, self.branch_reparam.bias


class KernelBiasBlock(nn.Module):
    """A block whose ``reparameterize()`` returns the equivalent ``(kernel, bias)`` (old RepVGG's
    ``get_equivalent_kernel_bias``); ``kind`` chooses a tuple of tensors, a list, or numpy arrays."""

    def __init__(self, cin: int, cout: int, stride: int = 2, groups: int = 2, kind: str = "tuple"):
        super().__init__()
        self.kind = kind
        self.small = conv_bn(cin, cout, 1, stride, 0, groups)
        self.large = conv_bn(cin, cout, 5, stride, 2, groups)
        self.mid = conv_bn(cin, cout, 3, stride, 1, groups)

    def forward(self, x):
        return self.small(x) + self.large(x) + self.mid(x)

    def reparameterize(self):
        k1, b1 = branch_kernel_bias(self.small.conv, self.small.bn)
        k3, b3 = branch_kernel_bias(self.mid.conv, self.mid.bn)
        k5, b5 = branch_kernel_bias(self.large.conv, self.large.bn)
        kernel, bias = k5 + F.pad(k3, [1, 1, 1, 1]) + F.pad(k1, [2, 2, 2, 2]), b1 + b3 + b5
        if self.kind == "numpy":
            return kernel.numpy(), bias.numpy()
        return [kernel, bias] if self.kind == "list" else (kernel, bias)


class ReturnsModule(nn.Module):
    """``fuse()`` returns a new module and leaves the block as it was."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = conv_bn(channels, channels, 3, 1, 1)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(self.body(x))

    def fuse(self):
        kernel, bias = branch_kernel_bias(self.body.conv, self.body.bn)
        conv = nn.Conv2d(self.body.conv.in_channels, self.body.conv.out_channels, 3, 1, 1, bias=True)
        conv.weight.data, conv.bias.data = kernel, bias
        return nn.Sequential(conv, nn.Hardswish())


class CopiesIntoNewConv(nn.Module):
    """timm's EfficientViT/RepViT pattern: ``fuse()`` makes ``nn.Conv2d(...)`` (in the default dtype) and copies the
    fused weights into it with ``copy_``, which would round a float64 fold to float32."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = conv_bn(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.body(x)

    def fuse(self):
        kernel, bias = branch_kernel_bias(self.body.conv, self.body.bn)
        conv = nn.Conv2d(self.body.conv.in_channels, self.body.conv.out_channels, 3, 1, 1, bias=True)
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        return conv


class ReturnsSelf(nn.Module):
    """The YOLO pattern: ``fuse()`` folds the BatchNorm into the conv in place and returns ``self``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), \
            nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) if hasattr(self, "bn") else self.conv(x))

    def fuse(self, verbose: bool = False):
        kernel, bias = branch_kernel_bias(self.conv, self.bn)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, 1, 1, bias=True)
        fused.weight.data, fused.bias.data = kernel, bias
        self.conv = fused
        delattr(self, "bn")
        return self


def prepared(block: nn.Module, seed: int = 0) -> nn.Module:
    """``block`` in float64 and eval mode, with random conv weights and BatchNorm statistics."""
    generator = make_generator(seed)
    block = block.double().eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=generator, dtype=torch.float64) / math.sqrt(w[0].numel()))
    randomize_bn(block, generator)
    return block


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=make_generator(seed), dtype=torch.float64)


def shapes(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


BLOCKS = {
    "timm_in_place": (lambda: TimmStyleBlock(6, 6, 3, 1, groups=3, branches=3), (2, 6, 7, 9), "reparameterize",
                      "in_place"),
    "timm_strided_no_identity": (lambda: TimmStyleBlock(4, 6, 5, 2, groups=2), (2, 4, 11, 8), "reparameterize",
                                 "in_place"),
    "mm_switch_to_deploy": (lambda: MMStyleBlock(5), (2, 5, 7, 6), "switch_to_deploy", "in_place"),
    "rebuilds_and_returns": (lambda: RebuildsAndReturns(4), (2, 4, 6, 5), "switch_to_deploy", "in_place"),
    "kernel_bias_tuple": (lambda: KernelBiasBlock(4, 6), (2, 4, 9, 11), "reparameterize", "returned"),
    "kernel_bias_list": (lambda: KernelBiasBlock(4, 6, stride=1, kind="list"), (1, 4, 7, 5), "reparameterize",
                         "returned"),
    "kernel_bias_numpy": (lambda: KernelBiasBlock(4, 4, stride=1, groups=4, kind="numpy"), (1, 4, 6, 7),
                          "reparameterize", "returned"),
    "returns_module": (lambda: ReturnsModule(3), (2, 3, 5, 7), "fuse", "returned"),
    "returns_self": (lambda: ReturnsSelf(3), (2, 3, 5, 7), "fuse", "in_place"),
    "copies_into_new_conv": (lambda: CopiesIntoNewConv(3), (2, 3, 6, 5), "fuse", "returned"),
}


@pytest.mark.parametrize("case", list(BLOCKS))
def test_fold_with_hook_is_exact_and_leaves_the_block_alone(case):
    build, shape, hook, mode = BLOCKS[case]
    block = prepared(build())
    x = rand(*shape)
    reference = block(x)
    block.train()  # the fold runs in eval mode on its copy; the caller's flags stay
    before = snapshot(block)
    deploy, info = fold_with_hook(block)
    assert info == {"hook": hook, "mode": mode}
    assert_unchanged(block, before)
    assert not deploy.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert rel_l2(deploy(x), reference) <= TOL  # exact: the hook ran with float64 as the default dtype
    assert {t.dtype for t in deploy.state_dict().values() if t.is_floating_point()} == {torch.float64}
    if info["mode"] == "in_place":
        assert type(deploy) is type(block)


@pytest.mark.parametrize("case", [case for case in BLOCKS if case != "kernel_bias_numpy"])
def test_replay_on_meta_builds_the_deploy_skeleton(case):
    build, shape, hook, _ = BLOCKS[case]
    block = prepared(build())
    deploy, info = fold_with_hook(block)
    with torch.device("meta"):
        skeleton = build().double()
    skeleton_before = list(skeleton.state_dict())
    replayed = replay_hook(skeleton, info["hook"])
    assert list(skeleton.state_dict()) == skeleton_before  # replayed on a copy
    assert shapes(replayed) == shapes(deploy)
    assert list(replayed.state_dict()) == list(deploy.state_dict())
    assert all(t.is_meta for t in replayed.state_dict().values())
    replayed.load_state_dict(deploy.state_dict(), strict=True, assign=True)
    x = rand(*shape)
    assert rel_l2(replayed.eval()(x), block(x)) <= TOL


def test_a_returned_kernel_takes_the_geometry_of_the_widest_conv():
    block = prepared(KernelBiasBlock(4, 6, stride=2, groups=2))
    deploy, _ = fold_with_hook(block)
    assert type(deploy) is nn.Conv2d
    assert (deploy.kernel_size, deploy.stride, deploy.padding, deploy.groups) == ((5, 5), (2, 2), (2, 2), 2)
    assert deploy.weight.dtype == torch.float64 and deploy.bias is not None


# ------------------------------------------------------------------------------------------- which hook, and refusals


class Both(nn.Module):
    def fuse(self):
        return None

    def switch_to_deploy(self):
        return None


class NeedsArgument(nn.Module):
    def fuse(self, other):
        return other


class FlagNotMethod(nn.Module):
    reparameterize = True

    def __init__(self):
        super().__init__()
        self.fuse = False  # an instance attribute hides nothing here: the class has no fuse()


class ShadowedMethod(ReturnsSelf):
    def __init__(self):
        super().__init__(2)
        self.fuse = True  # hides the class's fuse()


class FamilySubclass(RepVGGBlock):
    def reparameterize(self):
        return None


def test_hook_of():
    assert hook_of(TimmStyleBlock(2, 2)) == "reparameterize"
    assert hook_of(MMStyleBlock(2)) == "switch_to_deploy"
    assert hook_of(ReturnsSelf(2)) == "fuse"  # an optional argument is fine
    assert hook_of(Both()) == "switch_to_deploy"  # the preference order of plan.HOOKS
    assert hook_of(NeedsArgument()) is None
    assert hook_of(FlagNotMethod()) is None
    assert hook_of(ShadowedMethod()) is None
    assert hook_of(FamilySubclass(3, 3, 3, padding=1)) is None  # xvol folds its own families
    assert hook_of(RepVGGBlock(3, 3, 3, padding=1)) is None
    for plain in (nn.Conv2d(2, 2, 1), nn.Sequential(nn.ReLU()), nn.BatchNorm2d(2), nn.Module()):
        assert hook_of(plain) is None


class ReturnsText(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)

    def reparameterize(self):
        return "done"


class ReturnsWrongKernel(ReturnsText):
    def reparameterize(self):
        return torch.zeros(2, 2, 5, 5), torch.zeros(2)


class ReturnsKernelWithoutConv(nn.Module):
    def reparameterize(self):
        return torch.zeros(2, 2, 3, 3), torch.zeros(2)


class NeedsValues(TimmStyleBlock):
    """A hook that reads a value (``.item()``): it cannot run on meta tensors."""

    def reparameterize(self):
        if self.conv_scale.bn.eps > 0 and self.conv_scale.bn.running_var.sum().item() > 0:
            super().reparameterize()


def test_fold_with_hook_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="Conv2d has no re-parameterization hook"):
        fold_with_hook(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="RepVGGBlock has no re-parameterization hook"):
        fold_with_hook(RepVGGBlock(3, 3, 3, padding=1))
    with pytest.raises(ValueError, match=r"ReturnsText.reparameterize\(\) returned a str: neither None"):
        fold_with_hook(ReturnsText())
    with pytest.raises(ValueError, match=r"returned a \(2, 2, 5, 5\) kernel, but the block's widest conv holds"):
        fold_with_hook(ReturnsWrongKernel())
    with pytest.raises(ValueError, match="holds no conv"):
        fold_with_hook(ReturnsKernelWithoutConv())


def test_replay_refuses_with_the_class_and_hook():
    with torch.device("meta"):
        skeleton = NeedsValues(3, 3)
    with pytest.raises(ValueError, match=r"NeedsValues\.reparameterize\(\) cannot run on the meta device"):
        replay_hook(skeleton, "reparameterize")
    deploy, info = fold_with_hook(prepared(NeedsValues(3, 3)))  # it runs on real tensors
    assert info["mode"] == "in_place" and hasattr(deploy, "reparam_conv")
    with torch.device("meta"):
        skeleton = KernelBiasBlock(4, 4, kind="numpy")
    with pytest.raises(ValueError, match=r"KernelBiasBlock\.reparameterize\(\) cannot run on the meta device"):
        replay_hook(skeleton, "reparameterize")
    with pytest.raises(ValueError, match=r"MMStyleBlock has no reparameterize\(\) to replay"):
        replay_hook(MMStyleBlock(2), "reparameterize")
    with pytest.raises(ValueError, match="not a re-parameterization hook"):
        replay_hook(MMStyleBlock(2), "deploy")


def test_a_block_already_in_deploy_form_folds_to_itself():
    block = prepared(TimmStyleBlock(3, 3))
    deploy, _ = fold_with_hook(block)
    again, info = fold_with_hook(deploy)
    assert info == {"hook": "reparameterize", "mode": "in_place"}
    x = rand(2, 3, 5, 6)
    assert torch.equal(again(x), deploy(x))


# ------------------------------------------------------------------------------------------- with a fold plan


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 6, 3, 1, 1)
        self.stages = nn.Sequential(TimmStyleBlock(6, 6, groups=2), KernelBiasBlock(6, 4, stride=2))
        self.head = nn.Linear(4, 5)
        self.head_bn = nn.BatchNorm1d(5)

    def forward(self, x):
        x = self.stages(F.relu(self.stem(x)))
        return self.head_bn(self.head(x.mean(dim=(2, 3))))


def test_hooks_and_fusions_replay_through_a_fold_plan():
    model = prepared(Model())
    x = rand(2, 3, 9, 8)
    reference = model(x)
    deploy = copy.deepcopy(model)
    hooks = {}
    for name in ("stages.0", "stages.1"):
        folded, hooks[name] = fold_with_hook(deploy.get_submodule(name))
        deploy.stages[int(name[-1])] = folded
    deploy, fused, left = fuse_norms(deploy)
    assert [f["kind"] for f in fused] == ["conv_bn", "linear_bn"] and left == []
    assert hooks["stages.1"]["mode"] == "returned"
    assert rel_l2(deploy(x), reference) <= TOL

    plan = FoldPlan.from_dict(FoldPlan(fused=fused, hooks=hooks).to_dict())
    with torch.device("meta"):
        skeleton = Model().double()
    skeleton = apply_plan(skeleton, plan)
    skeleton.load_state_dict(deploy.state_dict(), strict=True, assign=True)
    assert rel_l2(skeleton.eval()(x), reference) <= TOL

