"""Run once, compare many: the reference outputs of one input set, and candidates' outputs by name.

:class:`Reference` runs the training form once in float64 (the ground truth of the function) and,
on demand, the baselines of each precision a candidate needs; every candidate is then compared with
those stored outputs, output by output and block by block.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from xvol_export.checkpoint import is_folded
from xvol_export.compare import ErrorStats, compare_arrays
from xvol_export.dtypes import DTYPES, dtype_name
from xvol_export.fold import fold
from xvol_export.fold.family import block_types
from xvol_export.fold.submodule import replace_submodule
from xvol_export.inputs import InputData
from xvol_export.layers.phase_conv import PhaseConv2d
from xvol_export.models.registry import input_cost
from xvol_export.runners import Runner
from xvol_export.runners.base import named_outputs
from xvol_export.verify.gates import UNIT_ROUNDOFF
from xvol_export.verify.noise import rounding_model
from xvol_export.verify.outputs import Baseline, Outputs, run_batches

# PyTorch on a CPU has only a naive dilated conv for these dtypes (25x slower than fp32 on the sample)
_SLOW_DILATED = (torch.float64, torch.float16)


def model_precision(model: nn.Module) -> str:
    """The precision of a model's floating parameters (fp32 for a model without any)."""
    tensor = next((t for t in model.parameters() if t.is_floating_point()), None)
    return "fp32" if tensor is None else dtype_name(tensor.dtype)


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
    the model run in float64, and :meth:`baselines` the honest implementations a candidate at some
    precision is judged next to (each computed once, then kept): the model itself run at that precision,
    its deploy form (``deploy``, the float64 fold of the model; folded here when not given) run at that
    precision against itself in float64, and the rounding model of other runtimes. From a runner (an ONNX
    graph): its outputs stand as the truth, and there is no float64 reference (``float64`` is False) and no
    baseline.
    """

    def __init__(self, source: nn.Module | Runner, data: InputData, name: str = "reference", *,
                 per_block: bool = True, batch_size: int = 64, deploy: nn.Module | None = None):
        self.data = data
        self.name = name
        self.batch_size = batch_size
        self.notes: list[str] = []
        self._runs: dict[tuple[str, str, bool], Outputs] = {}  # (what, precision, with blocks) -> its outputs
        self._stats: dict[tuple[str | None, str], dict[str, ErrorStats]] = {}
        self._deploy: nn.Module | bool | None = deploy  # False: folding changes nothing
        self._given_deploy = deploy is not None
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
            self.truth.isolated = self.truth.blocks  # in float64 a block's input is its float64 input
        else:
            self.model, self.blocks, self.float64, self.block_inputs = None, (), False, {}
            with source:
                self.truth = Outputs(run_batches(source, data.inputs, batch_size))

    def baseline(self, precision: str | None, blocks: bool = True) -> Outputs | None:
        """The reference model run at ``precision`` (fp32, fp16, bf16) on the same inputs (``blocks``: each block
        too, in the network and alone), computed once."""
        if precision is None or self.model is None:
            return None
        return self._run("model", precision, blocks, lambda with_blocks: self._run_at(self.model, precision,
                                                                                      with_blocks))

    def baselines(self, precision: str | None, blocks: bool = True) -> list[Baseline]:
        """The honest implementations at ``precision`` a candidate is judged next to, each with its own float64
        truth (what :mod:`~xvol_export.verify.gates` makes a limit of); ``blocks``: with each block's outputs:

        * the model itself run at that precision, against the truth;
        * when folding changes the model, its deploy form run at that precision against the deploy form in
          float64 (weights not rounded): the rounding every deploy artifact carries and the training form
          does not (its folded weights rounded once); a fault of the fold is on both sides, so it hides none;
        * the rounding model (:mod:`.noise`) of the deploy form (else of the model) at that precision: what
          runtimes that add biases and reduce in another order than PyTorch were measured to add; outputs only,
          since only PyTorch candidates are checked block by block, and their own rounding is measured.
        """
        own = self.baseline(precision, blocks)
        if own is None:
            return []
        found = [Baseline(f"{precision} {self.name}", self.truth, own)]
        deploy, deploy_truth = self.deploy_form, self._deploy_truth(blocks)
        if deploy is not None:
            ran = self._run("deploy", precision, blocks, lambda with_blocks: self._run_at(deploy, precision,
                                                                                          with_blocks))
            found.append(Baseline(f"{precision} deploy form", deploy_truth, ran))
        if precision in UNIT_ROUNDOFF:  # outputs only: blocks are checked in PyTorch, whose rounding is measured
            model = deploy if deploy is not None else self.model
            modelled = self._run("rounding model", precision, False,
                                 lambda _: self._run_rounding_model(model, precision))
            found.append(Baseline(f"{precision} rounding model", deploy_truth or self.truth, modelled))
        return found

    def baseline_stats(self, precision: str | None, key: str, blocks: bool = False) -> dict[str, ErrorStats]:
        """Every baseline's errors at ``precision`` (:meth:`baselines`), by what they are, for one output
        (``output:NAME``) or block (``isolated:NAME``, ``network:NAME``): computed once, for every candidate.
        ``blocks``: the candidate is checked per block too, so run the baselines' blocks now, once."""
        if (precision, key) not in self._stats:
            kind, name = key.split(":", 1)
            stats = {}
            for b in self.baselines(precision, blocks=blocks or kind != "output"):
                truth, run = {"output": (b.truth.values, b.outputs.values),
                              "isolated": (b.truth.isolated, b.outputs.isolated),
                              "network": (b.truth.blocks, b.outputs.blocks)}[kind]
                if name in truth and name in run:  # no quantiles: the gates read none of a baseline's
                    stats[b.label] = compare_arrays(truth[name], run[name], None, quantiles=False)
            self._stats[(precision, key)] = stats
        return self._stats[(precision, key)]

    def baseline_accuracy(self, precision: str | None, output: str) -> float | None:
        """The accuracy of the model run at ``precision`` on the labelled inputs (its ``output``), or None."""
        run = self.baseline(precision, blocks=False)
        labels = self.data.labels
        if run is None or labels is None or output not in run.values or run.values[output].ndim != 2:
            return None
        return float((run.values[output].argmax(1) == np.asarray(labels)).mean())

    def use_deploy_outputs(self, precision: str, outputs: Outputs) -> None:
        """Take ``outputs`` (with its blocks) as the deploy form's run at ``precision``: a fold's candidate is
        exactly that run."""
        self._runs[("deploy", precision, True)] = outputs
        self._stats = {k: v for k, v in self._stats.items() if k[0] != precision}

    def use_deploy_form(self, deploy: nn.Module) -> None:
        """Judge deploy candidates next to ``deploy``, the float64 fold of the model (as
        :func:`~xvol_export.fold.fold_both` gives it), instead of folding the model again here."""
        self._deploy, self._given_deploy = deploy, True
        self._runs = {k: v for k, v in self._runs.items() if k[0] == "model"}
        self._stats.clear()

    @property
    def deploy_form(self) -> nn.Module | None:
        """The float64 fold of the model (folded here on first use); None when folding changes nothing."""
        if self._deploy is None and self.model is not None:
            self._deploy = False
            if not is_folded(self.model):
                deploy, report = fold(self.model, input_shape=(1, *self.data.inputs.shape[1:]), dtype="fp64")
                self._deploy = deploy if report.blocks or report.fused else False
        return self._deploy if isinstance(self._deploy, nn.Module) else None

    def deploy_outputs(self, blocks: bool = True) -> Outputs | None:
        """The deploy form given to :meth:`use_deploy_form` (or at construction) run in float64 on these inputs
        (``blocks``: its blocks alone on the reference's block inputs too); None when it was not given."""
        return self._deploy_truth(blocks) if self._given_deploy else None

    def _deploy_truth(self, blocks: bool) -> Outputs | None:
        """:attr:`deploy_form` run in float64, computed once (None without a deploy form)."""
        deploy = self.deploy_form
        if deploy is None:
            return None

        def run(with_blocks: bool) -> Outputs:
            wide = _with_phase_convs(copy.deepcopy(deploy).eval().double())
            names = _present(wide, self.blocks) if with_blocks else ()
            outputs, _ = run_model(wide, self.data.inputs.double(), blocks=names,
                                   block_inputs={b: self.block_inputs[b] for b in names}, batch_size=self.batch_size)
            return outputs

        return self._run("deploy truth", "fp64", blocks, run)

    def _run(self, what: str, precision: str, blocks: bool, compute) -> Outputs:
        """``compute(blocks)`` once per what, precision and whether blocks are wanted (a run with them serves
        one without)."""
        for key in ((what, precision, True), (what, precision, blocks)):
            if key in self._runs:
                return self._runs[key]
        self._runs[(what, precision, blocks)] = compute(blocks)
        return self._runs[(what, precision, blocks)]

    def _run_at(self, model: nn.Module, precision: str, blocks: bool = True) -> Outputs:
        model, _ = eval_copy(model)
        if model_precision(model) != precision:
            model = copy.deepcopy(model).to(DTYPES[precision])
            if DTYPES[precision] in _SLOW_DILATED:
                model = _with_phase_convs(model)
        names = _present(model, self.blocks) if blocks else ()
        outputs, _ = run_model(model, self.data.inputs, blocks=names,
                               block_inputs={b: self.block_inputs[b] for b in names}, batch_size=self.batch_size)
        return outputs

    def _run_rounding_model(self, model: nn.Module, precision: str) -> Outputs:
        wide = _with_phase_convs(copy.deepcopy(model).eval().double())
        accumulate = min(UNIT_ROUNDOFF[precision], UNIT_ROUNDOFF["fp32"])  # half precisions accumulate in fp32
        with rounding_model(UNIT_ROUNDOFF[precision], accumulate):
            outputs, _ = run_model(wide, self.data.inputs.double(), batch_size=self.batch_size)
        return outputs

    def run_candidate(self, candidate: nn.Module | Runner) -> Outputs:
        """A candidate's outputs on this input set (a PyTorch model: per matching block too)."""
        if isinstance(candidate, nn.Module):
            candidate, _ = eval_copy(candidate)
            blocks = _present(candidate, self.blocks)  # its deploy form, under the same name
            outputs, _ = run_model(candidate, self.data.inputs, blocks=blocks,
                                   block_inputs={b: self.block_inputs[b] for b in blocks},
                                   batch_size=self.batch_size)
            return outputs
        with candidate:
            return Outputs(run_batches(candidate, self.data.inputs, self.batch_size))


def _present(model: nn.Module, blocks: tuple[str, ...]) -> tuple[str, ...]:
    """The named blocks ``model`` holds (a deploy form keeps each block under its name)."""
    modules = dict(model.named_modules())
    return tuple(b for b in blocks if b in modules)


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
        # the block inputs and outputs of the reference, the deploy form in float64, the two measured baselines and
        # a candidate
        needed += count * recorded * 8 * 6
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
        replace_submodule(model, name, phase.train(conv.training))
    return model
