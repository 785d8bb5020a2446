"""BatchNorm fusion into neighbouring convs and linears (``xvol_export.fold.conv_bn.fuse_norms``), the layers that
replace the absorbing ones (``fused_layer``) and the pure transforms behind them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from xvol_export.fold.arithmetic import bn_scale_shift, fuse_bn_before, fuse_bn_transposed
from xvol_export.fold.conv_bn import fuse_norms, fused_layer
from xvol_export.fold.model import apply_plan
from xvol_export.fold.plan import FoldPlan

from helpers import assert_unchanged, make_generator, randomize_bn, rel_l2, snapshot

TOL = 1e-12
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


pytestmark = pytest.mark.usefixtures("one_thread")  # small float64 convs: one thread is faster


def prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in float64 and eval mode, with random weights (fan-in scaled) and BatchNorm statistics."""
    generator = make_generator(seed)
    model = model.double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _LAYERS):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=generator, dtype=torch.float64) / math.sqrt(w[0].numel()))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator, dtype=torch.float64) * 0.3)
    randomize_bn(model, generator)
    return model


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=make_generator(seed), dtype=torch.float64)


def fuse_checked(model: nn.Module, x: torch.Tensor, leaf_types: tuple[type, ...] = ()):
    """Fuse a copy of ``model``; check the original is untouched and the fused copy computes the same in eval mode."""
    before = snapshot(model)
    reference = model(x)
    fused_model, fused, left = fuse_norms(copy.deepcopy(model), leaf_types)
    assert_unchanged(model, before)
    assert rel_l2(fused_model(x), reference) <= TOL
    kept = [n for n, m in fused_model.named_modules() if isinstance(m, _BatchNorm)]
    assert sorted(kept) == sorted(entry["name"] for entry in left)
    return fused_model, fused, left


def kinds(fused: list[dict]) -> list[str]:
    return [pair["kind"] for pair in fused]


class Bare(nn.Module):
    """``norm(layer(x))`` or, with ``before``, ``layer(norm(x))``: the simplest model of each kind."""

    def __init__(self, layer: nn.Module, norm: nn.Module, before: bool = False):
        super().__init__()
        self.layer, self.norm, self.before = layer, norm, before

    def forward(self, x):
        return self.layer(self.norm(x)) if self.before else self.norm(self.layer(x))


# --------------------------------------------------------------------------------------- each kind, exact

CASES = {
    "conv1d": (lambda: Bare(nn.Conv1d(6, 9, 5, stride=2, padding=3, dilation=2, groups=3, bias=False),
                            nn.BatchNorm1d(9)), (2, 6, 23), "conv_bn"),
    "conv2d": (lambda: Bare(nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), groups=2),
                            nn.BatchNorm2d(6)), (2, 4, 9, 11), "conv_bn"),
    "conv2d_circular_affine_false": (lambda: Bare(nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular"),
                                                  nn.BatchNorm2d(5, affine=False)), (1, 3, 7, 5), "conv_bn"),
    "conv3d": (lambda: Bare(nn.Conv3d(3, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4)), (1, 3, 5, 6, 7),
               "conv_bn"),
    "convtranspose1d": (lambda: Bare(nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1, output_padding=1, groups=2),
                                     nn.BatchNorm1d(6)), (2, 4, 9), "convtranspose_bn"),
    "convtranspose2d_grouped": (lambda: Bare(nn.ConvTranspose2d(6, 9, 3, stride=2, padding=1, output_padding=1,
                                                                groups=3, dilation=2, bias=False),
                                             nn.BatchNorm2d(9)), (2, 6, 5, 7), "convtranspose_bn"),
    "convtranspose3d": (lambda: Bare(nn.ConvTranspose3d(4, 6, 3, stride=(1, 2, 1), groups=2), nn.BatchNorm3d(6)),
                        (1, 4, 3, 4, 5), "convtranspose_bn"),
    "linear": (lambda: Bare(nn.Linear(7, 5), nn.BatchNorm1d(5)), (6, 7), "linear_bn"),
    "bn_conv2d_grouped": (lambda: Bare(nn.Conv2d(6, 4, 3, groups=2), nn.BatchNorm2d(6), before=True),
                          (2, 6, 7, 9), "bn_conv"),
    "bn_conv1d_valid": (lambda: Bare(nn.Conv1d(5, 3, 3, padding="valid", bias=False), nn.BatchNorm1d(5),
                                     before=True), (2, 5, 11), "bn_conv"),
    "bn_conv3d_same_1x1": (lambda: Bare(nn.Conv3d(4, 2, 1, padding="same"), nn.BatchNorm3d(4), before=True),
                           (1, 4, 3, 5, 4), "bn_conv"),
    "bn_conv_reflect": (lambda: Bare(nn.Conv2d(4, 4, 5, padding=2, padding_mode="reflect", groups=4),
                                     nn.BatchNorm2d(4), before=True), (2, 4, 7, 9), "bn_conv"),
    "bn_conv_replicate": (lambda: Bare(nn.Conv2d(3, 5, 3, padding=(1, 2), padding_mode="replicate"),
                                       nn.BatchNorm2d(3), before=True), (2, 3, 6, 5), "bn_conv"),
    "bn_conv_circular_same": (lambda: Bare(nn.Conv1d(3, 5, 4, padding="same", padding_mode="circular", dilation=2),
                                           nn.BatchNorm1d(3), before=True), (2, 3, 13), "bn_conv"),
    "bn_linear": (lambda: Bare(nn.Linear(7, 5, bias=False), nn.BatchNorm1d(7), before=True), (6, 7), "bn_linear"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_folds_exactly(case):
    build, shape, kind = CASES[case]
    model = prepared(build())
    fused_model, fused, left = fuse_checked(model, rand(*shape))
    assert fused == [{"kind": kind, "layer": "layer", "norm": "norm"}] and left == []
    assert isinstance(fused_model.norm, nn.Identity)
    layer, original = fused_model.layer, model.layer
    assert type(layer) is type(original) and layer.bias is not None and layer.weight.dtype == torch.float64
    assert layer.weight.shape == original.weight.shape


def test_grouped_transposed_weight_scales_output_channels_within_groups():
    """Weight (in, out/groups, k...): output channel ``g * out_g + j`` is column j of group g's rows."""
    generator = make_generator(3)
    groups, in_g, out_g = 3, 2, 4
    kernel = torch.randn(groups * in_g, out_g, 3, 3, generator=generator, dtype=torch.float64)
    scale = torch.randn(groups * out_g, generator=generator, dtype=torch.float64)
    shift = torch.randn(groups * out_g, generator=generator, dtype=torch.float64)
    fused, bias = fuse_bn_transposed(kernel, None, scale, shift, groups)
    for row in range(groups * in_g):
        for j in range(out_g):
            channel = (row // in_g) * out_g + j
            assert torch.equal(fused[row, j], kernel[row, j] * scale[channel])
    assert torch.equal(bias, shift)
    with pytest.raises(ValueError, match="transposed kernel"):
        fuse_bn_transposed(kernel, None, scale[:-1], shift[:-1], groups)


def test_bn_before_scales_input_channels_within_groups_and_sums_the_shift():
    generator = make_generator(4)
    groups, out_g, in_g = 2, 3, 2
    kernel = torch.randn(groups * out_g, in_g, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(groups * out_g, generator=generator, dtype=torch.float64)
    scale, shift = (torch.randn(groups * in_g, generator=generator, dtype=torch.float64) for _ in range(2))
    fused, fused_bias = fuse_bn_before(kernel, bias, scale, shift, groups)
    for out in range(groups * out_g):
        channels = (out // out_g) * in_g + torch.arange(in_g)
        assert torch.equal(fused[out], kernel[out] * scale[channels, None])
        assert torch.allclose(fused_bias[out], bias[out] + (kernel[out] * shift[channels, None]).sum(), rtol=1e-13)
    with pytest.raises(ValueError, match="inputs"):
        fuse_bn_before(kernel, bias, scale[:3], shift[:3], groups)


def test_computes_in_float64_and_casts_once():
    model = prepared(Bare(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).float()
    fused_model, fused, _ = fuse_norms(copy.deepcopy(model))
    assert kinds(fused) == ["conv_bn"]
    bn = model.norm
    scale, shift = bn_scale_shift(bn.running_mean.double(), bn.running_var.double(), bn.eps, bn.weight.double(),
                                  bn.bias.double())
    expected = model.layer.weight.double() * scale.reshape(-1, 1, 1, 1)
    assert fused_model.layer.weight.dtype == torch.float32
    assert torch.equal(fused_model.layer.weight, expected.float())
    assert torch.equal(fused_model.layer.bias, (shift + scale * model.layer.bias.double()).float())


class Net(nn.Module):
    """Every kind in one model, plus a BatchNorm after an add that must stay."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.post = nn.BatchNorm2d(8)  # after the residual add, before a ReLU: stays
        self.pre = nn.BatchNorm2d(8)  # before an unpadded conv
        self.mix = nn.Conv2d(8, 8, 1, bias=False)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)
        self.up_bn = nn.BatchNorm2d(6)
        self.head_in = nn.BatchNorm1d(6)
        self.fc1 = nn.Linear(6, 5)
        self.fc1_bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.post(x + self.body(x)))
        x = self.up_bn(self.up(self.mix(self.pre(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.relu(self.fc1_bn(self.fc1(self.head_in(x)))))


def test_a_whole_network():
    model = prepared(Net())
    fused_model, fused, left = fuse_checked(model, rand(3, 3, 13, 11))
    assert fused == [
        {"kind": "conv_bn", "layer": "stem", "norm": "stem_bn"},
        {"kind": "conv_bn", "layer": "body.0", "norm": "body.1"},
        {"kind": "conv_bn", "layer": "body.3", "norm": "body.4"},
        {"kind": "bn_conv", "layer": "mix", "norm": "pre"},
        {"kind": "convtranspose_bn", "layer": "up", "norm": "up_bn"},
        {"kind": "bn_linear", "layer": "fc1", "norm": "head_in"},
        {"kind": "linear_bn", "layer": "fc1", "norm": "fc1_bn"},
    ]
    assert [entry["name"] for entry in left] == ["post"]
    assert "follows the function add" in left[0]["reason"] and "not a conv or linear" in left[0]["reason"]
    assert fused_model.fc1.bias is not None and fused_model.mix.bias is not None


# --------------------------------------------------------------------------------------- a property


@settings(max_examples=60)
@given(
    data=st.data(),
    dims=st.sampled_from([1, 2, 3]),
    kind=st.sampled_from(["conv_bn", "convtranspose_bn", "bn_conv"]),
    groups=st.integers(1, 3),
    in_g=st.integers(1, 3),
    out_g=st.integers(1, 3),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_fold_is_exact_or_refused_with_a_reason(data, dims, kind, groups, in_g, out_g, kernel, stride,
                                                         dilation, bias, affine, seed):
    size = data.draw(st.lists(st.integers(kernel * dilation, kernel * dilation + 4), min_size=dims, max_size=dims))
    if dims == 3:
        size = [min(s, 6) for s in size]
    padding = data.draw(st.integers(0, min(size) - 1 if kind != "convtranspose_bn" else dilation * (kernel - 1)))
    mode = "zeros" if kind == "convtranspose_bn" else data.draw(
        st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    assume(mode != "reflect" or padding < min(size))
    norm_type = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    cin, cout = groups * in_g, groups * out_g
    if kind == "convtranspose_bn":
        output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
        layer = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1](
            cin, cout, kernel, stride, padding, output_padding, groups, bias, dilation)
        out = [(s - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 for s in size]
        assume(min(out) >= 1)
    else:
        layer = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](cin, cout, kernel, stride, padding, dilation, groups,
                                                          bias, padding_mode=mode)
        assume(min(size) + 2 * padding >= dilation * (kernel - 1) + 1)
    norm = norm_type(cin if kind == "bn_conv" else cout, affine=affine)
    model = prepared(Bare(layer, norm, before=kind == "bn_conv"), seed)
    fused_model, fused, left = fuse_checked(model, rand(2, cin, *size, seed=seed + 1))
    if kind == "bn_conv" and mode == "zeros" and padding:
        assert fused == [] and len(left) == 1 and "zero-pads" in left[0]["reason"]
    else:
        assert fused == [{"kind": kind, "layer": "layer", "norm": "norm"}] and left == []


# --------------------------------------------------------------------------------------- what stays, and why


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.bn(x)
        return self.a(y) + self.b(y)


class ConvIntoTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn1(y) * self.bn2(y)


class AfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn, self.act = nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.a(x) + self.b(x)))


class ReusedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.bn(x)))


class ReusedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.conv(x)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            x = -x
        return self.bn(self.conv(x))


class StdConv(nn.Conv2d):
    """A conv that standardizes its weight in forward (timm's StdConv2d): folding into its weight would be wrong."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


class TiedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(5, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.fc(x)) + F.linear(x, self.fc.weight)


class ReadsAttribute(nn.Module):
    """Forward reads a plain attribute of one norm: that pair must stay, the other still folds."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn1(self.c1(x))
        return self.bn2(self.c2(y)) * self.bn2.num_features + self.bn2.running_var.reshape(1, -1, 1, 1)


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.spare = Opaque(), nn.BatchNorm2d(3)
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.block(x)))


LEFT = {
    "bn_feeds_two": (TwoConsumers, (2, 4, 5, 6), [], {"bn": ["follows the model's input", "feeds 2 consumers"]}),
    "conv_feeds_two_bns": (ConvIntoTwo, (2, 3, 6, 7), [], {"bn1": ["'conv' feeds 2 consumers"],
                                                         "bn2": ["'conv' feeds 2 consumers"]}),
    "bn_after_add": (AfterAdd, (2, 3, 6, 5), [], {"bn": ["follows the function add", "feeds ReLU 'act'"]}),
    "reused_norm": (ReusedNorm, (2, 3, 6, 5), [], {"bn": ["called 2 times"]}),
    "reused_conv": (ReusedConv, (2, 3, 6, 5), [], {"bn": ["'conv' is called 2 times", "feeds the model's output"]}),
    "zero_padding": (lambda: Bare(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(3), before=True), (2, 3, 5, 7), [],
                     {"norm": ["zero-pads (padding=(1, 1))", "reflect, replicate, circular"]}),
    "no_running_stats": (lambda: Bare(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
                         (2, 3, 5, 7), [], {"norm": ["track_running_stats=False"]}),
    "before_transposed": (lambda: Bare(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(3), before=True), (2, 3, 5, 4),
                          [], {"norm": ["ConvTranspose2d 'layer'", "does not fold exactly"]}),
    "std_conv": (lambda: Bare(StdConv(3, 4, 3), nn.BatchNorm2d(4)), (2, 3, 5, 6), [],
                 {"norm": ["StdConv, which overrides forward"]}),
    "weight_norm": (lambda: Bare(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)),
                    (2, 3, 5, 6), [], {"norm": ["computes its weight"]}),
    "tied_weight": (TiedWeight, (4, 5), [], {"bn": ["'fc.weight' read by forward itself"]}),
    "reads_attribute": (ReadsAttribute, (2, 3, 6, 5), ["conv_bn"],
                        {"bn2": ["breaks forward", "no attribute 'num_features'"]}),
    "opaque_and_unused": (WithOpaque, (2, 3, 4, 5), ["conv_bn"],
                          {"block.bn": ["inside Opaque 'block'"], "spare": ["never calls it"]}),
}


@pytest.mark.parametrize("case", list(LEFT))
def test_every_norm_left_is_named_with_its_reason(case):
    build, shape, fused_kinds, expected = LEFT[case]
    model = prepared(build())
    _, fused, left = fuse_checked(model, rand(*shape), leaf_types=(Opaque,))
    assert kinds(fused) == fused_kinds
    reasons = {entry["name"]: entry["reason"] for entry in left}
    assert set(reasons) == set(expected)
    for name, phrases in expected.items():
        for phrase in phrases:
            assert phrase in reasons[name], f"{name}: {phrase!r} not in {reasons[name]!r}"


def test_an_untraceable_model_is_left_whole_with_the_tracing_error():
    model = prepared(Untraceable())
    before = snapshot(model)
    result, fused, left = fuse_norms(model)
    assert result is model and fused == []
    assert len(left) == 1 and left[0]["name"] == ""
    assert "torch.fx cannot trace" in left[0]["reason"] and "TraceError" in left[0]["reason"]
    assert "no BatchNorm was fused" in left[0]["reason"]
    assert_unchanged(model, before)


def test_a_model_without_norms_is_returned_as_it_is():
    model = Untraceable()
    model.bn = nn.Identity()
    assert fuse_norms(model) == (model, [], [])


def test_a_family_block_stays_opaque():
    from xvol_export.layers.repvgg import RepVGGBlock

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.conv, self.bn = RepVGGBlock(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(self.block(x)))

    model = prepared(Wrapped())
    _, fused, left = fuse_checked(model, rand(2, 3, 5, 6))
    assert kinds(fused) == ["conv_bn"]
    assert {e["name"] for e in left} == {"block.rbr_identity", "block.rbr_dense.bn", "block.rbr_1x1.bn"}
    assert all("inside RepVGGBlock 'block'" in e["reason"] for e in left)
    block = prepared(RepVGGBlock(3, 3, 3, padding=1))
    _, fused, left = fuse_norms(copy.deepcopy(block))
    assert fused == [] and len(left) == 3 and all("'(the model)'" in e["reason"] for e in left)


# --------------------------------------------------------------------------------------- fused_layer and plans


@pytest.mark.parametrize("build", [
    lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=False, padding_mode="reflect"),
    lambda: nn.Conv2d(3, 6, (3, 5), dilation=(1, 2), padding="same"),
    lambda: nn.Conv3d(2, 4, 1, bias=False),
    lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1, groups=2, bias=False),
    lambda: nn.ConvTranspose2d(6, 9, 4, stride=2, padding=1, groups=3),
    lambda: nn.ConvTranspose3d(2, 2, 3, bias=False),
    lambda: nn.Linear(5, 7, bias=False),
], ids=["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"])
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_fused_layer_keeps_type_geometry_device_and_dtype(build, device):
    layer = build().to(device=device, dtype=torch.float16)
    had_bias = layer.bias is not None
    new = fused_layer(layer)
    assert type(new) is type(layer) and new is not layer and new.weight is not layer.weight
    geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                "padding_mode", "output_padding", "transposed", "in_features", "out_features")
    for attr in geometry:
        assert getattr(new, attr, None) == getattr(layer, attr, None), attr
    out = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    assert new.bias is not None and new.bias.shape == (out,)
    assert (layer.bias is not None) == had_bias  # the given layer is untouched
    for tensor in (new.weight, new.bias):
        assert tensor.device.type == device and tensor.dtype == torch.float16
    assert list(new.state_dict()) == ["weight", "bias"]


def test_fused_layer_keeps_a_subclass_and_refuses_other_modules():
    class Custom(nn.Conv2d):
        def __init__(self, channels: int):
            super().__init__(channels, channels, 3, bias=False)
            self.tag = "kept"

    new = fused_layer(Custom(4))
    assert type(new) is Custom and new.tag == "kept" and new.bias.shape == (4,)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        fused_layer(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="lazy"):
        fused_layer(nn.LazyConv2d(4, 3))


@pytest.mark.parametrize("how", ["assign", "to_empty"])
def test_a_meta_skeleton_takes_the_fused_state_dict_strictly(how):
    model = prepared(Net())
    x = rand(2, 3, 9, 10)
    reference = model(x)
    fused_model, fused, _ = fuse_norms(copy.deepcopy(model))
    state = fused_model.state_dict()
    plan = FoldPlan.from_dict(FoldPlan(fused=fused).to_dict())
    with torch.device("meta"):
        skeleton = Net().double()
    skeleton = apply_plan(skeleton, plan)
    assert list(skeleton.state_dict()) == list(state)
    if how == "assign":
        skeleton.load_state_dict(state, strict=True, assign=True)
    else:
        skeleton = skeleton.to_empty(device="cpu")
        skeleton.load_state_dict(state, strict=True)
    assert rel_l2(skeleton.eval()(x), reference) <= TOL


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: a BatchNorm subclass with its own forward and an activation."""

    def __init__(self, channels: int, act: nn.Module):
        super().__init__(channels)
        self.act = act

    def forward(self, x):
        return self.act(nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                                 self.training, 0.1, self.eps))


@pytest.mark.parametrize("act, fused", [(nn.Identity(), True), (nn.ReLU(), False)], ids=["identity", "relu"])
def test_a_batchnorm_subclass_folds_only_where_it_computes_a_plain_batchnorm(act, fused):
    """A subclass whose forward is exactly BatchNorm's (its activation an identity) folds like one; with a ReLU it
    stays, named with the reason. Decided by running it, not by its class name."""
    model = Bare(nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNormAct(4, act)).double().eval()
    randomize_bn(model, make_generator(3))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=make_generator(4))
    expected = model(x)
    folded, done, left = fuse_norms(copy.deepcopy(model))
    assert bool(done) is fused and bool(left) is not fused
    if fused:
        assert done == [{"kind": "conv_bn", "layer": "layer", "norm": "norm"}]
    else:
        assert "computes more than a BatchNorm" in left[0]["reason"]
    assert rel_l2(folded(x), expected) <= TOL
