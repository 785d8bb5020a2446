"""The transforms of ``xvol_export.fold.arithmetic`` used by the ACB, DBB and dilated-reparam folds, each against
a direct computation (F.conv2d, F.avg_pool2d, two convs in sequence), in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xvol_export.fold.arithmetic import avg_pool_kernel, merge_1x1_kxk, merge_dilated, pad_kernel, pad_kernel_to

from helpers import make_generator, rel_l2

TOL = 1e-12
F64 = torch.float64


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def pad_with(y: torch.Tensor, value: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """``y`` padded by ``ph`` rows and ``pw`` columns on each side with the per-channel ``value``."""
    n, c, h, w = y.shape
    out = value.reshape(1, c, 1, 1).expand(n, c, h + 2 * ph, w + 2 * pw).clone()
    out[:, :, ph : ph + h, pw : pw + w] = y
    return out


# --------------------------------------------------------------------------------------------
# pad_kernel_to
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 2), (2, 6)])
def test_pad_kernel_to_asymmetric_into_square(k, stride, groups):
    """A ``1 x k`` (``k x 1``) conv with padding ``(0, k//2)`` (``(k//2, 0)``) is the centred ``k x k`` conv."""
    gen = make_generator(k * 13 + stride * 5 + groups)
    hor, ver = randn(gen, 6, 6 // groups, 1, k), randn(gen, 6, 6 // groups, k, 1)
    x = randn(gen, 2, 6, 7, 9)
    for kernel, padding in ((hor, (0, k // 2)), (ver, (k // 2, 0))):
        ref = F.conv2d(x, kernel, stride=stride, padding=padding, groups=groups)
        square = pad_kernel_to(kernel, k, k)
        assert square.shape == (6, 6 // groups, k, k) and square.dtype == F64
        assert torch.count_nonzero(square) == torch.count_nonzero(kernel)
        assert rel_l2(F.conv2d(x, square, stride=stride, padding=k // 2, groups=groups), ref) <= TOL


@pytest.mark.parametrize("kh,kw,height,width", [(3, 5, 7, 9), (1, 1, 5, 3), (5, 3, 5, 3), (3, 1, 9, 5)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_pad_kernel_to_rectangular(kh, kw, height, width, dilation):
    gen = make_generator(kh * 100 + kw * 10 + height + width + dilation)
    kernel = randn(gen, 4, 3, kh, kw)
    x = randn(gen, 1, 3, 11, 8)
    ref = F.conv2d(x, kernel, padding=(dilation * (kh // 2), dilation * (kw // 2)), dilation=dilation)
    padded = pad_kernel_to(kernel, height, width)
    assert padded.shape == (4, 3, height, width)
    out = F.conv2d(x, padded, padding=(dilation * (height // 2), dilation * (width // 2)), dilation=dilation)
    assert rel_l2(out, ref) <= TOL


def test_pad_kernel_to_agrees_with_pad_kernel():
    kernel = randn(make_generator(5), 3, 2, 3, 3)
    assert torch.equal(pad_kernel_to(kernel, 7, 7), pad_kernel(kernel, 7))


@pytest.mark.parametrize("kh,kw,height,width", [(3, 3, 4, 5), (3, 3, 5, 4), (1, 3, 1, 2), (5, 5, 3, 5), (3, 1, 3, 0)])
def test_pad_kernel_to_rejects_uncentrable_sizes(kh, kw, height, width):
    with pytest.raises(ValueError, match="cannot centre"):
        pad_kernel_to(torch.zeros(2, 2, kh, kw, dtype=F64), height, width)


# --------------------------------------------------------------------------------------------
# merge_1x1_kxk
# --------------------------------------------------------------------------------------------


def two_convs(x, k1, b1, k2, b2, stride, groups):
    """The 1x1 conv, its output padded with ``b1``, then the unpadded ``k x k`` conv: DBB's transIII layout."""
    ph, pw = k2.shape[-2] // 2, k2.shape[-1] // 2
    mid = pad_with(F.conv2d(x, k1, b1, groups=groups), b1, ph, pw)
    return F.conv2d(mid, k2, b2, stride=stride, groups=groups)


def check_merge_1x1_kxk(gen, cin, mid, cout, kh, kw, stride, groups, h, w):
    k1, b1 = randn(gen, mid, cin // groups, 1, 1), randn(gen, mid)
    k2, b2 = randn(gen, cout, mid // groups, kh, kw), randn(gen, cout)
    x = randn(gen, 2, cin, h, w)
    ref = two_convs(x, k1, b1, k2, b2, stride, groups)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2, groups)
    assert kernel.shape == (cout, cin // groups, kh, kw) and bias.shape == (cout,)
    assert kernel.dtype == bias.dtype == F64
    out = F.conv2d(x, kernel, bias, stride=stride, padding=(kh // 2, kw // 2), groups=groups)
    assert rel_l2(out, ref) <= TOL


@pytest.mark.parametrize(
    "cin,mid,cout,groups",
    [
        (3, 5, 4, 1),
        (4, 4, 6, 1),
        (4, 6, 8, 2),  # grouped, middle wider than the input
        (6, 6, 3, 3),
        (4, 8, 4, 4),  # depthwise with 2x internal channels (DBB's default when groups == out_channels)
        (5, 5, 5, 5),  # fully depthwise
    ],
)
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_merge_1x1_kxk_equals_two_convs_with_bias_padding(cin, mid, cout, groups, k, stride):
    gen = make_generator(cin * 1000 + mid * 100 + cout * 10 + groups + k * 7 + stride)
    check_merge_1x1_kxk(gen, cin, mid, cout, k, k, stride, groups, 7, 9)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 5), (13, 4)])
def test_merge_1x1_kxk_odd_shapes(h, w):
    gen = make_generator(h * 10 + w)
    check_merge_1x1_kxk(gen, 4, 6, 2, 3, 5, 2, 2, h, w)  # a 3x5 second kernel, stride 2
    check_merge_1x1_kxk(gen, 3, 3, 3, 3, 3, 1, 3, h, w)


def test_merge_1x1_kxk_needs_the_bias_padding():
    """Negative control: with the intermediate zero-padded the merged conv differs (on the border)."""
    gen = make_generator(7)
    k1, b1 = randn(gen, 4, 3, 1, 1), randn(gen, 4)
    k2, b2 = randn(gen, 5, 4, 3, 3), randn(gen, 5)
    x = randn(gen, 1, 3, 6, 6)
    zero_padded = F.conv2d(F.conv2d(x, k1, b1), k2, b2, padding=1)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2)
    assert rel_l2(F.conv2d(x, kernel, bias, padding=1), zero_padded) > 1e-3


def test_merge_1x1_kxk_rejects_mismatched_kernels():
    with pytest.raises(ValueError, match="cannot chain"):
        merge_1x1_kxk(torch.zeros(4, 3, 3, 3, dtype=F64), torch.zeros(4, dtype=F64), torch.zeros(5, 4, 3, 3),
                      torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="cannot chain"):  # 6 middle channels in 2 groups: 3 per group, not 6
        merge_1x1_kxk(torch.zeros(6, 2, 1, 1, dtype=F64), torch.zeros(6, dtype=F64), torch.zeros(4, 6, 3, 3),
                      torch.zeros(4, dtype=F64), groups=2)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    cin_per=st.integers(1, 3),
    mid_per=st.integers(1, 3),
    cout_per=st.integers(1, 3),
    kh=st.sampled_from([1, 3, 5]),
    kw=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_merge_1x1_kxk_property(groups, cin_per, mid_per, cout_per, kh, kw, stride, h, w, seed):
    check_merge_1x1_kxk(make_generator(seed), groups * cin_per, groups * mid_per, groups * cout_per, kh, kw, stride,
                        groups, h, w)


# --------------------------------------------------------------------------------------------
# avg_pool_kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("padded", [False, True])
def test_avg_pool_kernel_equals_avg_pool(k, stride, groups, padded):
    gen = make_generator(k * 100 + stride * 10 + groups + int(padded))
    x = randn(gen, 2, 6, 7, 9)
    padding = k // 2 if padded else 0
    ref = F.avg_pool2d(x, k, stride=stride, padding=padding, count_include_pad=True)
    kernel = avg_pool_kernel(6, k, groups)
    assert kernel.shape == (6, 6 // groups, k, k) and kernel.dtype == F64
    assert rel_l2(F.conv2d(x, kernel, stride=stride, padding=padding, groups=groups), ref) <= TOL


@pytest.mark.parametrize("h,w", [(1, 1), (3, 1), (5, 8)])
def test_avg_pool_kernel_rectangular_and_odd_shapes(h, w):
    gen = make_generator(h * 10 + w + 500)
    x = randn(gen, 1, 4, h, w)
    ref = F.avg_pool2d(x, (3, 5), stride=(2, 1), padding=(1, 2), count_include_pad=True)
    out = F.conv2d(x, avg_pool_kernel(4, (3, 5), 2), stride=(2, 1), padding=(1, 2), groups=2)
    assert rel_l2(out, ref) <= TOL


def test_avg_pool_kernel_dtype_and_rejects():
    assert avg_pool_kernel(4, 3, 2, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError):
        avg_pool_kernel(5, 3, 2)
    with pytest.raises(ValueError):
        avg_pool_kernel(4, 0, 1)


# --------------------------------------------------------------------------------------------
# merge_dilated
# --------------------------------------------------------------------------------------------


def dilated_sum(x, branches, stride, groups):
    """The parallel centred convs computed directly, each with its own dilation."""
    out = 0
    for kernel, bias, r in branches:
        kh, kw = kernel.shape[-2:]
        out = out + F.conv2d(x, kernel, bias, stride=stride, padding=(r * (kh // 2), r * (kw // 2)), dilation=r,
                             groups=groups)
    return out


def check_merge_dilated(gen, channels, groups, shapes, stride, h, w, size=None):
    branches = [(randn(gen, channels, channels // groups, kh, kw), randn(gen, channels), r) for kh, kw, r in shapes]
    x = randn(gen, 2, channels, h, w)
    ref = dilated_sum(x, branches, stride, groups)
    kernel, bias = merge_dilated(branches, size)
    height, width = kernel.shape[-2:]
    expect_h = max(r * (kh - 1) + 1 for kh, _, r in shapes)
    expect_w = max(r * (kw - 1) + 1 for _, kw, r in shapes)
    if size is None:
        assert (height, width) == (expect_h, expect_w)
    out = F.conv2d(x, kernel, bias, stride=stride, padding=(height // 2, width // 2), groups=groups)
    assert rel_l2(out, ref) <= TOL
    return kernel


# The official UniRepLKNet tables (kernel 17, 13, 7, 5) with the large kernel as a dilation-1 branch.
UNIREPLKNET = {
    17: [(17, 17, 1), (5, 5, 1), (9, 9, 2), (3, 3, 4), (3, 3, 5), (3, 3, 7)],
    13: [(13, 13, 1), (5, 5, 1), (7, 7, 2), (3, 3, 3), (3, 3, 4), (3, 3, 5)],
    7: [(7, 7, 1), (5, 5, 1), (3, 3, 2), (3, 3, 3)],
    5: [(5, 5, 1), (3, 3, 1), (3, 3, 2)],
}


@pytest.mark.parametrize("large", sorted(UNIREPLKNET))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 4])  # 4: depthwise
def test_merge_dilated_unireplknet_tables(large, stride, groups):
    gen = make_generator(large * 10 + stride * 3 + groups)
    kernel = check_merge_dilated(gen, 4, groups, UNIREPLKNET[large], stride, 19, 21)
    assert kernel.shape[-2:] == (large, large)


@pytest.mark.parametrize("h,w", [(1, 1), (7, 9), (2, 13)])
def test_merge_dilated_odd_shapes_rectangular_kernels_and_explicit_size(h, w):
    gen = make_generator(h * 31 + w)
    shapes = [(3, 5, 1), (1, 3, 3), (3, 1, 2)]  # dense sizes 3x5, 1x7, 5x1 -> 5x7
    check_merge_dilated(gen, 3, 1, shapes, 2, h, w)
    kernel = check_merge_dilated(gen, 3, 3, shapes, 1, h, w, size=(9, 11))
    assert kernel.shape[-2:] == (9, 11)
    assert check_merge_dilated(gen, 2, 2, [(3, 3, 2)], 1, h, w, size=9).shape[-2:] == (9, 9)


def test_merge_dilated_rejects():
    with pytest.raises(ValueError, match="at least one"):
        merge_dilated([])
    k = torch.zeros(2, 1, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match="cannot centre"):  # a dilation-3 3x3 is 7x7
        merge_dilated([(k, torch.zeros(2, dtype=F64), 3)], 5)
    with pytest.raises(ValueError, match="cannot centre"):
        merge_dilated([(k, torch.zeros(2, dtype=F64), 1), (torch.zeros(2, 1, 2, 2, dtype=F64),
                                                         torch.zeros(2, dtype=F64), 1)])


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    per_group=st.integers(1, 2),
    shapes=st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5]), st.integers(1, 4)),
                    min_size=1, max_size=5),
    stride=st.integers(1, 2),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_merge_dilated_property(groups, per_group, shapes, stride, h, w, seed):
    channels = groups * per_group
    check_merge_dilated(make_generator(seed), channels, groups, shapes, stride, h, w)
