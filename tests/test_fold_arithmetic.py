"""Each pure function of ``xvol_export.fold.arithmetic`` against a direct computation, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xvol_export.fold.arithmetic import add_branches, bn_scale_shift, concat_1x1, dilate_kernel, fuse_bn, pad_kernel

from helpers import make_generator, randomize_bn, rel_l2

TOL = 1e-12
F64 = torch.float64


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def random_bn(channels: int, gen: torch.Generator, affine: bool = True, eps: float = 1e-5) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=eps, affine=affine).to(F64)
    assert randomize_bn(bn, gen) == 1
    return bn.eval()


def as_channel(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1, 1)


# --------------------------------------------------------------------------------------------
# bn_scale_shift
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("affine", [True, False])
def test_bn_scale_shift_matches_eval_batchnorm(affine, eps):
    gen = make_generator(1 + int(affine) + int(eps * 1e5))
    bn = random_bn(7, gen, affine=affine, eps=eps)
    x = randn(gen, 3, 7, 5, 4)
    inputs = [bn.running_mean.clone(), bn.running_var.clone()]
    if affine:
        inputs += [bn.weight.detach().clone(), bn.bias.detach().clone()]
        scale, shift = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach())
    else:
        assert bn.weight is None and bn.bias is None
        scale, shift = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps)
    assert scale.shape == shift.shape == (7,)
    assert scale.dtype == shift.dtype == F64
    with torch.no_grad():
        ref = bn(x)
    assert rel_l2(as_channel(scale) * x + as_channel(shift), ref) <= TOL
    # The arguments are left alone.
    after = [bn.running_mean, bn.running_var] + ([bn.weight.detach(), bn.bias.detach()] if affine else [])
    assert all(torch.equal(a, b) for a, b in zip(inputs, after, strict=True))


def test_bn_scale_shift_closed_form():
    gen = make_generator(2)
    mean, var = randn(gen, 5), 0.3 + 2.7 * torch.rand(5, generator=gen, dtype=F64)
    gamma, beta = randn(gen, 5), randn(gen, 5)
    scale, shift = bn_scale_shift(mean, var, 1e-3, gamma, beta)
    expected_scale = gamma / torch.sqrt(var + 1e-3)
    assert rel_l2(scale, expected_scale) <= TOL
    assert rel_l2(shift, beta - mean * expected_scale) <= TOL
    # affine=False is gamma = 1, beta = 0.
    s0, c0 = bn_scale_shift(mean, var, 1e-3)
    s1, c1 = bn_scale_shift(mean, var, 1e-3, torch.ones(5, dtype=F64), torch.zeros(5, dtype=F64))
    assert rel_l2(s0, s1) <= TOL and rel_l2(c0, c1) <= TOL


# --------------------------------------------------------------------------------------------
# fuse_bn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cin,cout,kernel,stride,padding,dilation,groups",
    [
        (4, 6, 3, 1, 1, 1, 1),
        (4, 6, 3, 2, 1, 1, 2),
        (6, 6, 3, 1, 1, 1, 6),  # depthwise
        (3, 5, 5, 1, 4, 2, 1),  # dilated 5x5
        (5, 3, 1, 2, 0, 1, 1),  # 1x1 strided
        (2, 4, 7, 2, 3, 1, 1),
    ],
)
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fuse_bn_matches_conv_then_bn(cin, cout, kernel, stride, padding, dilation, groups, conv_bias):
    gen = make_generator(cin * 100 + cout * 10 + kernel + stride + groups + int(conv_bias))
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=conv_bias).to(F64)
    with torch.no_grad():
        conv.weight.copy_(randn(gen, *conv.weight.shape))
        if conv_bias:
            conv.bias.copy_(randn(gen, cout))
    bn = random_bn(cout, gen)
    x = randn(gen, 2, cin, 9, 7)
    with torch.no_grad():
        ref = bn(conv(x))
    scale, shift = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach())
    kernel_f, bias_f = fuse_bn(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), scale, shift)
    assert kernel_f.shape == conv.weight.shape and bias_f.shape == (cout,)
    out = F.conv2d(x, kernel_f, bias_f, stride, padding, dilation, groups)
    assert rel_l2(out, ref) <= TOL


def test_fuse_bn_ignoring_conv_bias_would_be_caught():
    """Negative control: the conv-bias term is large enough that dropping it fails the check."""
    gen = make_generator(3)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).to(F64)
    with torch.no_grad():
        conv.weight.copy_(randn(gen, *conv.weight.shape))
        conv.bias.copy_(randn(gen, 4))
    bn = random_bn(4, gen)
    x = randn(gen, 1, 3, 6, 6)
    with torch.no_grad():
        ref = bn(conv(x))
    scale, shift = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach())
    kernel_f, bias_wrong = fuse_bn(conv.weight.detach(), None, scale, shift)
    assert rel_l2(F.conv2d(x, kernel_f, bias_wrong, padding=1), ref) > 1e-3


# --------------------------------------------------------------------------------------------
# pad_kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,size", [(1, 3), (1, 5), (3, 3), (3, 5), (3, 9), (5, 9), (3, 13)])
@pytest.mark.parametrize("stride", [1, 2])
def test_pad_kernel_keeps_the_conv(k, size, stride):
    gen = make_generator(k * 31 + size + stride)
    weight = randn(gen, 5, 2, k, k)
    x = randn(gen, 2, 2, 11, 8)
    ref = F.conv2d(x, weight, stride=stride, padding=k // 2)
    padded = pad_kernel(weight, size)
    assert padded.shape == (5, 2, size, size)
    assert padded.dtype == F64
    p = (size - k) // 2
    assert torch.equal(padded[..., p : p + k, p : p + k], weight)
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[p : p + k, p : p + k] = False
    assert torch.count_nonzero(padded[..., mask]) == 0
    out = F.conv2d(x, padded, stride=stride, padding=size // 2)
    assert rel_l2(out, ref) <= TOL


@pytest.mark.parametrize("k,size", [(3, 4), (3, 6), (1, 2), (5, 3), (3, 1)])
def test_pad_kernel_rejects_uncentrable_sizes(k, size):
    with pytest.raises(ValueError):
        pad_kernel(torch.zeros(2, 2, k, k, dtype=F64), size)


def test_pad_kernel_rejects_non_square():
    with pytest.raises(ValueError):
        pad_kernel(torch.zeros(2, 2, 3, 5, dtype=F64), 7)


# --------------------------------------------------------------------------------------------
# dilate_kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 3)])
def test_dilate_kernel_dense_equals_dilated(k, dilation, stride, groups):
    gen = make_generator(k * 97 + dilation * 7 + stride + groups)
    weight = randn(gen, 6, 6 // groups, k, k)
    x = randn(gen, 2, 6, 13, 10)
    pad = dilation * (k // 2)
    ref = F.conv2d(x, weight, stride=stride, padding=pad, dilation=dilation, groups=groups)
    dense = dilate_kernel(weight, dilation)
    size = dilation * (k - 1) + 1
    assert dense.shape == (6, 6 // groups, size, size)
    assert torch.equal(dense[..., ::dilation, ::dilation], weight)
    assert torch.count_nonzero(dense) == torch.count_nonzero(weight)
    out = F.conv2d(x, dense, stride=stride, padding=pad, groups=groups)
    assert rel_l2(out, ref) <= TOL


def test_dilate_kernel_identity_for_dilation_one():
    weight = randn(make_generator(4), 3, 2, 5, 5)
    assert torch.equal(dilate_kernel(weight, 1), weight)


# --------------------------------------------------------------------------------------------
# add_branches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branches", [2, 3])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 2)])
def test_add_branches_equals_sum_of_convs(branches, stride, groups):
    gen = make_generator(branches * 10 + stride + groups)
    pairs = [(randn(gen, 4, 4 // groups, 5, 5), randn(gen, 4)) for _ in range(branches)]
    x = randn(gen, 2, 4, 9, 12)
    ref = sum(F.conv2d(x, w, b, stride=stride, padding=2, groups=groups) for w, b in pairs)
    kernel, bias = add_branches(*pairs)
    assert kernel.shape == (4, 4 // groups, 5, 5) and bias.shape == (4,)
    out = F.conv2d(x, kernel, bias, stride=stride, padding=2, groups=groups)
    assert rel_l2(out, ref) <= TOL


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_static_fold_chain_3x3_plus_dilated_5x5(dilation):
    """pad_kernel + dilate_kernel + add_branches together give the dense (4d+1)^2 conv."""
    gen = make_generator(50 + dilation)
    k3, b3 = randn(gen, 4, 3, 3, 3), randn(gen, 4)
    k5, b5 = randn(gen, 4, 3, 5, 5), randn(gen, 4)
    x = randn(gen, 2, 3, 11, 9)
    ref = F.conv2d(x, k3, b3, padding=1) + F.conv2d(x, k5, b5, padding=2 * dilation, dilation=dilation)
    size = 4 * dilation + 1
    kernel, bias = add_branches((pad_kernel(k3, size), b3), (dilate_kernel(k5, dilation), b5))
    assert kernel.shape[-2:] == (size, size)
    out = F.conv2d(x, kernel, bias, padding=2 * dilation)
    assert rel_l2(out, ref) <= TOL


# --------------------------------------------------------------------------------------------
# concat_1x1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_concat_1x1_split_equals_separate_convs(stride):
    gen = make_generator(60 + stride)
    q, k, v = randn(gen, 3, 5, 1, 1), randn(gen, 3, 5, 1, 1), randn(gen, 7, 5, 1, 1)
    x = randn(gen, 2, 5, 9, 6)
    stacked = concat_1x1(q, k, v)
    assert stacked.shape == (13, 5, 1, 1)
    parts = torch.split(F.conv2d(x, stacked, stride=stride), [3, 3, 7], dim=1)
    for part, weight in zip(parts, (q, k, v), strict=True):
        assert rel_l2(part, F.conv2d(x, weight, stride=stride)) <= TOL
