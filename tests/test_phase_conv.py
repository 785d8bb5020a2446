"""The dilated conv by phase images: the same function as ``F.conv2d``, the same parameters as ``nn.Conv2d``."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xvol_export import XVolution
from xvol_export.export import onnx_graph
from xvol_export.fold import fold_xvolution
from xvol_export.layers.phase_conv import PhaseConv2d, conv2d_by_phases

from helpers import make_generator, randomize_bn, rel_l2


@st.composite
def conv_cases(draw) -> dict:
    groups = draw(st.integers(1, 3))
    return {
        "kernel": draw(st.sampled_from([1, 3, 5, 7])),
        "stride": draw(st.integers(1, 3)),
        "dilation": draw(st.integers(1, 4)),
        "groups": groups,
        "cin": groups * draw(st.integers(1, 3)),
        "cout": groups * draw(st.integers(1, 3)),
        "batch": draw(st.integers(1, 3)),
        "height": draw(st.integers(1, 17)),
        "width": draw(st.integers(1, 17)),
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(max_examples=150)
@given(case=conv_cases())
def test_conv_by_phases_matches_direct_conv(case):
    gen = make_generator(case["seed"])
    k, d = case["kernel"], case["dilation"]
    x = torch.randn(case["batch"], case["cin"], case["height"], case["width"], generator=gen, dtype=torch.float64)
    w = torch.randn(case["cout"], case["cin"] // case["groups"], k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(case["cout"], generator=gen, dtype=torch.float64) if case["bias"] else None
    ref = F.conv2d(x, w, b, case["stride"], d * (k - 1) // 2, d, case["groups"])
    out = conv2d_by_phases(x, w, b, case["stride"], d, case["groups"])
    assert out.shape == ref.shape
    assert rel_l2(out, ref) <= 1e-12


def test_conv_by_phases_is_not_trivially_equal():
    """Negative control: the phases must interleave back in place; a transposed interleave is caught."""
    gen = make_generator(3)
    x = torch.randn(1, 2, 8, 8, generator=gen)
    w = torch.randn(2, 2, 5, 5, generator=gen)
    ref = F.conv2d(x, w, None, 1, 4, 2)
    out = conv2d_by_phases(x, w, None, 1, 2)
    assert rel_l2(out, ref) < 1e-6
    assert rel_l2(out.transpose(-1, -2), ref) > 0.1
    assert rel_l2(conv2d_by_phases(x.transpose(-1, -2), w, None, 1, 2), ref) > 0.1


@pytest.mark.parametrize("kernel", [2, 4])
def test_even_kernel_is_refused(kernel):
    with pytest.raises(ValueError, match="odd"):
        PhaseConv2d(2, 2, kernel)
    with pytest.raises(ValueError, match="odd"):
        conv2d_by_phases(torch.zeros(1, 2, 5, 5), torch.zeros(2, 2, kernel, kernel))


def test_phase_conv_module_has_the_conv_state_dict():
    gen = make_generator(4)
    direct = nn.Conv2d(4, 6, 5, stride=2, padding=4, dilation=2, groups=2, bias=True)
    phases = PhaseConv2d(4, 6, 5, stride=2, dilation=2, groups=2, bias=True)
    assert {k: v.shape for k, v in phases.state_dict().items()} == {k: v.shape for k, v in direct.state_dict().items()}
    phases.load_state_dict(direct.state_dict())
    assert isinstance(phases, nn.Conv2d) and phases.padding == direct.padding
    x = torch.randn(2, 4, 11, 9, generator=gen)
    with torch.no_grad():
        assert rel_l2(phases(x), direct(x)) < 1e-6


def test_deploy_block_by_phases_exports_to_standard_onnx():
    """The phases form is exportable too (Reshape/Transpose/Slice/Pad): ONNX Runtime agrees with PyTorch."""
    gen = make_generator(5)
    block = XVolution(8, 8, dilation=2)
    randomize_bn(block, gen)
    deploy = fold_xvolution(block.eval(), "split", "phases")
    shape = (1, 8, 9, 7)  # odd sizes: the padded-to-even path
    graph = onnx_graph.check_graph(onnx_graph.export_onnx(deploy, shape))
    x = torch.randn(shape, generator=gen)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = block(x)
    assert rel_l2(torch.from_numpy(out), ref) < 1e-5
