"""The X-volution family: three branches with BatchNorm (3x3 conv, dilated 5x5 conv, pixel-shift attention)
folded into static convs (``dense``: one ``(4d+1)x(4d+1)`` kernel; ``split``: 3x3 + dilated 5x5) plus a
parameter-free attention aggregate; see ``docs/xvolution.md``."""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
from torch import nn

from xvol_export.fold.arithmetic import add_branches, bn_affine64, concat_1x1, conv_bn64, dilate_kernel, pad_kernel
from xvol_export.fold.cost import choose_layout
from xvol_export.fold.family import BlockFamily, FoldContext, RuntimeTarget, finish_fold, register_family
from xvol_export.layers.xvolution import AGGREGATES, DILATED_CONVS, LAYOUTS, XVolution, XVolutionDeploy
from xvol_export.limits import check_fits

# The fastest options measured per runtime (2-core x86 CPU). PyTorch eager: dilated convs by phase images, the
# aggregate by slices. Exported graphs: see ``onnx_options``.
TORCH_CPU_OPTIONS = MappingProxyType({"dilated_conv": "phases", "aggregate": "slices"})
# One-hot convs beat slices on ONNX Runtime at batch 1 and 2 and lose about 1 % from batch 4 on, where
# their nine-fold copies of k and v (9 MB per stage-3 block at batch 4) no longer stay in cache.
ONNX_CONVS_MAX_BATCH = 2


def onnx_options(batch: int, dynamic: bool = False) -> dict[str, str]:
    """The deploy-block options for a graph exported at ``batch``. A ``dynamic`` batch may be large, so it
    keeps the slices, which cost a few per cent at batch 1 but nothing at large batches."""
    small = not dynamic and batch <= ONNX_CONVS_MAX_BATCH
    return {"dilated_conv": "direct", "aggregate": "convs" if small else "slices"}


def runtime_options(target: RuntimeTarget) -> dict[str, str]:
    """PyTorch on the CPU: ``TORCH_CPU_OPTIONS``; an exported graph (any other backend): ``onnx_options``."""
    if target.backend == "torch":
        return dict(TORCH_CPU_OPTIONS) if target.device == "cpu" else {"dilated_conv": "direct", "aggregate": "slices"}
    return onnx_options(target.batch, target.dynamic)


def fold_xvolution(block: XVolution, layout: str = "split", dilated_conv: str = "direct",
                   aggregate: str = "slices") -> XVolutionDeploy:
    """The deploy form of an eval-mode ``XVolution``, computed in float64 and cast at the end.

    ``dilated_conv`` and ``aggregate`` only choose how the deploy block computes (see
    :class:`XVolutionDeploy`); the weights are the same either way.
    """
    deploy = XVolutionDeploy(**block.config(), layout=layout, dilated_conv=dilated_conv, aggregate=aggregate)
    return finish_fold(block, deploy, _deploy_weights(block, deploy.layout))


def _deploy_weights(block: XVolution, layout: str) -> dict[str, torch.Tensor]:
    """The deploy block's tensors in float64: each branch's BN fused into its conv; ``dense``: the 3x3 kernel
    padded onto the dilated 5x5's taps, one kernel; ``split``: the two kept apart, the biases on the 3x3."""
    k3, b3 = conv_bn64(block.conv, block.conv_bn)
    extra_bias = torch.zeros_like(b3)
    tensors = {}
    if block.attention:
        v_scale, v_shift = bn_affine64(block.attn_bn)
        extra_bias = v_shift  # softmax weights sum to 1, so attn_bn's shift is a constant per channel
        attn = block.attn
        q = attn.q.weight.detach().double() / math.sqrt(block.attn_channels)
        k = attn.k.weight.detach().double()
        v = attn.v.weight.detach().double() * v_scale.reshape(-1, 1, 1, 1)
        tensors["proj.weight"] = concat_1x1(q, k, v)

    if not block.dilated_branch:
        return {**tensors, "static.weight": k3, "static.bias": b3 + extra_bias}
    k5, b5 = conv_bn64(block.dconv, block.dconv_bn)
    if layout == "dense":
        size = 4 * block.dilation + 1
        kernel, bias = add_branches((pad_kernel(k3, size), b3), (dilate_kernel(k5, block.dilation), b5))
        return {**tensors, "static.weight": kernel, "static.bias": bias + extra_bias}
    return {**tensors, "conv.weight": k3, "conv.bias": b3 + b5 + extra_bias, "dconv.weight": k5}


def _fold(block: nn.Module, context: FoldContext) -> nn.Module:
    layout = context.layout or "split"
    if layout == "dense" and block.dilated_branch:
        _check_dense_fits(block)
    return fold_xvolution(block, layout, **context.runtime)


def _check_dense_fits(block: XVolution) -> None:
    """A dense block's one kernel is ``(4d+1)x(4d+1)``: refuse one that cannot fit before it is made (the
    float64 fold keeps three of that size, the deploy block one more)."""
    size = 4 * block.dilation + 1
    values = float(block.out_channels) * (block.in_channels // block.groups) * size * size
    check_fits(values * 4 * 8,
               f"the dense layout of dilation {block.dilation} (one {size}x{size} kernel, {values:,.0f} values)",
               "Fold it with --layout split (or auto), which keeps the 3x3 and the dilated 5x5 apart.")


def _choose(block: nn.Module, context: FoldContext) -> tuple[str, str]:
    return choose_layout(block.config(), context.out_hw)


def _apply_runtime(block: nn.Module, options: dict[str, str]) -> nn.Module:
    config = {**block.config(), **options}
    param = next(block.parameters())
    rebuilt = XVolutionDeploy(**config).to(device=param.device, dtype=param.dtype).train(block.training)
    rebuilt.load_state_dict(block.state_dict())
    return rebuilt


def _deploy_config(deploy: nn.Module) -> dict:
    """The deploy block's structure; how it computes (``dilated_conv``, ``aggregate``) is a runtime choice, set
    after loading, not part of what a checkpoint records."""
    return {k: v for k, v in deploy.config().items() if k not in ("dilated_conv", "aggregate")}


def describe_training(block: nn.Module) -> str:
    parts = ["conv3x3+BN"]
    if block.dilated_branch:
        parts.append(f"conv5x5(d={block.dilation})+BN")
    if block.attention:
        parts.append("PSSA(q,k,v 1x1)+BN")
    return " + ".join(parts)


def describe_deploy(block: nn.Module) -> str:
    if block.layout == "dense":
        k = block.static.kernel_size[0]
        parts = [f"conv{k}x{k}"]
    else:
        parts = ["conv3x3", f"conv5x5(d={block.dilation})"]
    if block.attention:
        parts.append("proj1x1 + aggregate")
    return " + ".join(parts)


def _extra_macs(block: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """The attention aggregate: nine ``A``-long dot products and nine ``O``-wide sums per output pixel."""
    if not block.attention:
        return 0
    h, w = output_shape[-2:]
    return 9 * (block.attn_channels + block.out_channels) * h * w


def _graph_convs(block: nn.Module) -> int:
    """Its convs, plus the two one-hot shift convs of an aggregate computed by convs."""
    convs = sum(isinstance(m, nn.Conv2d) for m in block.modules())
    if block.attention and block.aggregate == "convs":
        convs += 2
    return convs


def shift_conv_names(model) -> list[str]:
    """Names of the Conv nodes of an ONNX graph whose constant weights are one-hot shift kernels (``[9 g, 1, 3,
    3]``, ``group = g``, each output channel a single 1): the aggregate's pixel copies, which INT8 keeps in float."""
    import numpy as np
    import onnx.numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = onnx.numpy_helper.to_array(constants[node.input[1]])
        if weight.shape != (9 * group, 1, 3, 3):
            continue
        onehot = np.tile(np.eye(9, dtype=weight.dtype).reshape(9, 1, 3, 3), (group, 1, 1, 1))
        if np.array_equal(weight, onehot):
            names.append(node.name)
    return names


# ----------------------------------------------------------------------- deploy checkpoints: layouts

def relayout(block: XVolutionDeploy, layout: str) -> XVolutionDeploy:
    """``block`` itself when it is laid out as ``layout``, else an empty deploy block like it in that layout, on its
    device and in its dtype (a version-1 checkpoint records its blocks' layouts, not their deploy configs)."""
    if block.layout == layout:
        return block
    param = next(block.parameters())
    return XVolutionDeploy(**{**block.config(), "layout": layout}).to(device=param.device, dtype=param.dtype)


def single_form(config: dict) -> bool:
    """Whether the deploy block of ``config`` is the same under every layout: without a dilated branch it is one
    3x3 conv whatever layout was asked for."""
    return config.get("dilated_branch") is False


FAMILY = register_family(BlockFamily(
    name="xvolution",
    description="3x3 conv+BN + dilated 5x5 conv+BN + pixel-shift attention+BN -> static conv(s) + attention",
    training_types=(XVolution,),
    deploy_types=(XVolutionDeploy,),
    fold=_fold,
    deploy_config=_deploy_config,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    layouts=LAYOUTS,
    choose_layout=_choose,
    extra_macs=_extra_macs,
    graph_convs=_graph_convs,
    int8_float_nodes=shift_conv_names,
    runtime_choices={"dilated_conv": DILATED_CONVS, "aggregate": AGGREGATES},
    runtime_options=runtime_options,
    apply_runtime=_apply_runtime,
    relayout=relayout,
    single_form=single_form,
    examples=lambda: [
        XVolution(8, 8, groups=2, attn_channels=4),
        XVolution(4, 8, stride=2, dilation=1, attention=False),
    ],
))
