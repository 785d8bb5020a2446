"""Run once, compare many: the reference outputs of one input set, and candidates' outputs by name.

:class:`Reference` runs the training form once in float64 (the ground truth of the function) and,
on demand, once at each precision a candidate needs as its baseline; every candidate is then
compared with those stored outputs, output by output and block by block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from xvol_export.dtypes import DTYPES, dtype_name
from xvol_export.fold.family import block_types
from xvol_export.inputs import InputData
from xvol_export.layers.phase_conv import PhaseConv2d
from xvol_export.models.registry import input_cost
from xvol_export.runners import Runner
from xvol_export.runners.base import named_outputs

# PyTorch on a CPU has only a naive dilated conv for these dtypes (25x slower than fp32 on the sample)
_SLOW_DILATED = (torch.float64, torch.float16)


def model_precision(model: nn.Module) -> str:
    """The precision of a model's floating parameters (fp32 for a model without any)."""
    tensor = next((t for t in model.parameters() if t.is_floating_point()), None)
    return "fp32" if tensor is None else dtype_name(tensor.dtype)


@dataclass
class Outputs:
    """One model's outputs on one input set (float64 copies), by output name and by block name.

    ``blocks`` holds each block's output inside its own network; ``isolated`` each block run alone on
    the reference's float64 block input (cast to the model's precision): the block's own error.
    """

    values: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray] = field(default_factory=dict)
    isolated: dict[str, np.ndarray] = field(default_factory=dict)


def run_batches(runner: Runner, inputs: torch.Tensor | np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run ``inputs`` through ``runner`` in batches; every output, stacked, by name (float64).

    A runner with a fixed batch size gets exactly that many items per call (the last batch is
    padded with copies of its last item, and the padding's outputs are dropped).
    """
    array = inputs.numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    name = runner.input_names()[0]
    fixed = runner.fixed_batch()
    step = fixed or batch_size
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(array), step):
        chunk = array[start: start + step]
        count = len(chunk)
        if fixed and count < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        for key, value in runner.infer({name: chunk}).items():
            outputs.setdefault(key, []).append(np.asarray(value, dtype=np.float64)[:count])
    return {key: np.concatenate(parts, axis=0) for key, parts in outputs.items()}


def run_model(model: nn.Module, inputs: torch.Tensor, *, blocks: tuple[str, ...] = (),
              block_inputs: dict[str, np.ndarray] | None = None, record_inputs: bool = False,
              batch_size: int = 64) -> tuple[Outputs, dict[str, np.ndarray]]:
    """Run an eval-mode ``model`` in its own precision on ``inputs``; record the named ``blocks``.

    With ``block_inputs`` (float64, by block), each block also runs alone on its input. With
    ``record_inputs`` the blocks' own inputs are returned too (float64), for a reference run.
    """
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    modules = dict(model.named_modules())
    seen_out: dict[str, list[np.ndarray]] = {name: [] for name in blocks}
    seen_in: dict[str, list[np.ndarray]] = {name: [] for name in blocks}

    def hook(name):
        def record(_module, args, output):
            seen_out[name].append(_float64_copy(output))
            if record_inputs:
                seen_in[name].append(_float64_copy(args[0]))
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in blocks]
    values: dict[str, list[np.ndarray]] = {}
    try:
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start: start + batch_size].to(dtype, copy=True)
                for key, value in named_outputs(model(chunk)).items():
                    values.setdefault(key, []).append(_float64_copy(value))
    finally:
        for handle in handles:
            handle.remove()
    outputs = Outputs({k: np.concatenate(v) for k, v in values.items()},
                      {k: np.concatenate(v) for k, v in seen_out.items() if v})
    for name, x in (block_inputs or {}).items():
        if name in modules:
            outputs.isolated[name] = _run_alone(modules[name], x, dtype, batch_size)
    recorded = {k: np.concatenate(v) for k, v in seen_in.items() if v} if record_inputs else {}
    return outputs, recorded


def _run_alone(block: nn.Module, x: np.ndarray, dtype: torch.dtype, batch_size: int) -> np.ndarray:
    parts = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            chunk = torch.tensor(x[start: start + batch_size], dtype=dtype)  # a copy: blocks may work in place
            parts.append(_float64_copy(block(chunk)))
    return np.concatenate(parts)


def _float64_copy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy that later in-place operations of the model cannot change."""
    return tensor.detach().cpu().to(torch.float64, copy=True).numpy()


def eval_copy(model: nn.Module) -> tuple[nn.Module, bool]:
    """``model`` if it is in eval mode, else an eval-mode copy; the flag says whether a copy was forced."""
    if not model.training:
        return model, False
    return copy.deepcopy(model).eval(), True


def block_names(model: nn.Module) -> tuple[str, ...]:
    """The blocks a fold replaces, each checked on its own: every registered family's block, and every block of
    an unknown class with its own re-parameterization hook (the outermost one; the model itself is checked
    end to end)."""
    from xvol_export.fold.hooks import hook_of

    if isinstance(model, block_types()):
        return ("",)  # a bare block
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{b}.") for b in names):
            continue
        if isinstance(module, block_types()) or hook_of(module) is not None:
            names.append(name)
    return tuple(names)


class Reference:
    """The reference side of every check on one input set, computed once.

    From a PyTorch model (the training form, or a deploy model when only that exists): ``truth`` is
    the model run in float64, and :meth:`baseline` the model run at a candidate's precision (each
    computed once, then kept). From a runner (an ONNX graph): its outputs stand as the truth, and
    there is no float64 reference (``float64`` is False) and no baseline.
    """

    def __init__(self, source: nn.Module | Runner, data: InputData, name: str = "reference", *,
                 per_block: bool = True, batch_size: int = 64):
        self.data = data
        self.name = name
        self.batch_size = batch_size
        self.notes: list[str] = []
        self._baselines: dict[str, Outputs] = {}
        if isinstance(source, nn.Module):
            self.model, forced = eval_copy(source)
            if forced:
                self.notes.append(f"{name} was in training mode: run in eval mode (running BatchNorm statistics)")
            self.blocks = block_names(self.model) if per_block else ()
            check_run_fits(self.model, data, batch_size, per_block=bool(self.blocks))
            self.float64 = True
            wide = _with_phase_convs(copy.deepcopy(self.model).double())
            self.truth, self.block_inputs = run_model(wide, data.inputs.double(), blocks=self.blocks,
                                                      record_inputs=True, batch_size=batch_size)
        else:
            self.model, self.blocks, self.float64, self.block_inputs = None, (), False, {}
            with source:
                self.truth = Outputs(run_batches(source, data.inputs, batch_size))

    def baseline(self, precision: str | None) -> Outputs | None:
        """The reference model run at ``precision`` (fp32, fp16, bf16) on the same inputs, computed once."""
        if precision is None or self.model is None:
            return None
        if precision not in self._baselines:
            model = self.model
            if model_precision(model) != precision:
                model = copy.deepcopy(model).to(DTYPES[precision])
                if DTYPES[precision] in _SLOW_DILATED:
                    model = _with_phase_convs(model)
            self._baselines[precision], _ = run_model(model, self.data.inputs, blocks=self.blocks,
                                                      block_inputs=self.block_inputs, batch_size=self.batch_size)
        return self._baselines[precision]

    def run_candidate(self, candidate: nn.Module | Runner) -> Outputs:
        """A candidate's outputs on this input set (a PyTorch model: per matching block too)."""
        if isinstance(candidate, nn.Module):
            candidate, _ = eval_copy(candidate)
            modules = dict(candidate.named_modules())
            blocks = tuple(b for b in self.blocks if b in modules)  # its deploy form, under the same name
            outputs, _ = run_model(candidate, self.data.inputs, blocks=blocks,
                                   block_inputs={b: self.block_inputs[b] for b in blocks},
                                   batch_size=self.batch_size)
            return outputs
        with candidate:
            return Outputs(run_batches(candidate, self.data.inputs, self.batch_size))


def check_run_fits(model: nn.Module, data: InputData, batch_size: int = 64, per_block: bool = True) -> None:
    """Refuse, before anything runs, a verification on ``data`` that cannot fit in memory: the inputs in float64,
    the activations of one chunk of ``batch_size`` inputs in float64, and (``per_block``) every block's input and
    output kept for the reference, the baseline and a candidate. Activations are known for models xvol built."""
    from xvol_export.limits import check_fits

    count, shape = len(data.inputs), tuple(data.inputs.shape[1:])
    per_input = float(data.inputs[0].numel()) if count else 0.0
    activations, recorded = input_cost(model, shape) or (0.0, 0.0)
    needed = count * per_input * 8 + min(count, batch_size) * activations
    if per_block:
        needed += count * recorded * 8 * 4  # the reference's block inputs and outputs, the baseline's, a candidate's
    check_fits(needed, f"verifying on {data.source} ({count:,} input(s) of {'x'.join(map(str, shape))})",
               "Verify on fewer or smaller inputs (a smaller --input-shape or --batch, fewer images in --data).")


def check_batch_fits(model: nn.Module | None, shape: tuple[int, ...], what: str, fix: str, itemsize: int = 4,
                     per_input_activation_bytes: float | None = None) -> None:
    """Refuse, before any allocation, a run of ``model`` on one batch of ``shape`` (N, C, H, W) that cannot fit:
    the batch itself and its activations at ``itemsize`` bytes a value (from the model's size rule, or
    ``per_input_activation_bytes`` in float64 when known otherwise, e.g. from an ONNX graph's value shapes)."""
    from xvol_export.limits import check_fits, tensor_bytes

    activations = per_input_activation_bytes
    if activations is None and model is not None:
        activations = (input_cost(model, tuple(shape[1:])) or (0.0, 0.0))[0]
    per_input = tensor_bytes(shape[1:], itemsize) + (activations or 0.0) * itemsize / 8
    check_fits(float(shape[0]) * per_input, what, fix)


def _with_phase_convs(model: nn.Module) -> nn.Module:
    """``model`` (changed in place) with its "same"-padded dilated convs computed by phase images.

    The same function up to summation order (see :mod:`xvol_export.layers.phase_conv`), and dense
    convs avoid PyTorch's naive dilated kernels in float64 and float16 on a CPU.
    """
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d or conv.dilation[0] == 1 or conv.padding_mode != "zeros":
            continue
        k, d, s = conv.kernel_size[0], conv.dilation[0], conv.stride[0]
        if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.dilation != (d, d) or conv.stride != (s, s)
                or conv.padding != (d * (k - 1) // 2,) * 2):
            continue
        phase = PhaseConv2d(conv.in_channels, conv.out_channels, k, s, d, conv.groups, bias=conv.bias is not None)
        phase = phase.to(device=conv.weight.device, dtype=conv.weight.dtype)
        phase.load_state_dict(conv.state_dict())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, phase.train(conv.training))
    return model
