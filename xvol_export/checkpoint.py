"""The xvol checkpoint: architecture, constructor arguments, state dict, fold plan and metadata.

Saved as ``.pth`` (a plain dict, loadable with ``torch.load(weights_only=True)``) or
``.safetensors`` (tensors, with the rest as JSON in the header's metadata). The header (format version 2):
``format``, ``format_version``, ``architecture`` (a registered name or a user's ``package.module:factory``),
``config`` (its JSON-plain arguments), ``folded``, ``fold_plan`` (:class:`~xvol_export.fold.plan.FoldPlan` as a
dict for a deploy checkpoint, else null), ``metadata`` and ``state_dict_sha256`` (the sha256 of the tensors,
:func:`~xvol_export.integrity.state_dict_sha256`; files saved before it was recorded have none). A deploy checkpoint
is rebuilt from the training skeleton with its fold plan applied; version-1 files (``layouts`` instead of the plan)
are still read. Loading is strict: every missing, unexpected or misshapen key is reported by name (weights of the
other form, deploy or training, are recognized as such), and weights with NaN/Inf or negative running variances are
refused; so is a damaged file: a ``.pth`` archive member whose CRC-32 does not match, or weights whose sha256 is not
the one recorded.

Weights of any floating dtype (fp16, bf16, fp32, fp64; :data:`DTYPES`) load and build the model in
that dtype; a file must hold one floating dtype, and a tensor of another kind (integer, bool,
complex) where the model has a floating one, or the reverse, is refused by name.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import xvol_export
from xvol_export.dtypes import DTYPES, describe_dtype, dtype_kind, dtype_name, resolve_dtype
from xvol_export.errors import XvolError
from xvol_export.fold.plan import FoldPlan
from xvol_export.forms import apply_fold_plan, current_plan, derive_plan, recognize_form
from xvol_export.integrity import SHA256_HEX, check_archive_crc, state_dict_sha256
from xvol_export.io import CHECKPOINT_SUFFIXES, atomic_write, build_timestamp, open_for_native_writer, sha256_file
from xvol_export.layers.xvolution import LAYOUTS, XVolutionDeploy
from xvol_export.limits import check_fits, check_input_file, format_bytes
from xvol_export.models import create_model, get_model_entry
from xvol_export.models.registry import FORM_ARGS
from xvol_export.models.spec import ModelSpec, config_problems, is_json_plain, is_user_spec, plain_config

FORMAT = "xvol.checkpoint"
FORMAT_VERSION = 2  # 2: fold_plan; 1: layouts (X-volution blocks only), still read
WEIGHTS_HASH = "state_dict_sha256"  # the header's record of the tensors' sha256 (absent in older files)
SUFFIXES = CHECKPOINT_SUFFIXES
# Prefixes that training wrappers add to every key (DataParallel/DDP, Lightning, torch.compile).
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Where common training scripts keep the weights inside their own checkpoint dicts.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_KIND_WORDS = {"float": "a floating-point", "int": "an integer", "bool": "a bool", "complex": "a complex"}
# Names that deploy forms of common re-parameterizable blocks give their folded layers (RepVGG, MobileOne/FastViT,
# ACNet, DBB, UniRepLKNet): recognized even in a user's own block that xvol cannot fold on the meta device.


@dataclass
class Checkpoint:
    """A loaded checkpoint, before any model is built.

    ``plan`` is the fold plan of a deploy checkpoint (None for a training one, and for a version-1 file until its
    model is built); ``layouts`` the X-volution blocks' layouts (a version-1 header's, else the plan's).
    ``format_version`` is the version of the file read (None for a checkpoint made in memory).
    """

    architecture: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    folded: bool = False
    layouts: dict[str, str] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    plan: FoldPlan | None = None
    format_version: int | None = None
    weights_sha256: str | None = None  # the sha256 of the tensors its header records (None: not recorded)

    def __post_init__(self) -> None:
        if self.plan is not None and not self.layouts:
            self.layouts = plan_layouts(self.plan)

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "<checkpoint>"

    @property
    def dtype(self) -> str | None:
        """The floating dtype of the weights as a short name (``fp16``, ``bf16``, ``fp32``, ``fp64``).

        ``None`` when the state dict holds no floating tensor; :class:`XvolError` when it mixes
        floating dtypes or holds one xvol does not read (float8).
        """
        found = weights_dtype(self.state_dict, self.label)
        return dtype_name(found) if found is not None else None


@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint.

    ``model`` (``--model``): a registered name or a user's ``package.module:factory``, for a plain state dict or
    a training script's dict, and required to read back a checkpoint of a user's model (a factory a file names is
    never imported unless given here); ``model_kwargs`` (``--model-kwargs``): its JSON-plain arguments. ``arch`` and
    ``config`` (``--arch``, ``--arch-config``) are the same for registered names. ``use_ema``: the EMA weights of a
    training script's dict; ``trust_pickle``: allow files that need full unpickling.
    """

    trust_pickle: bool = False
    arch: str | None = None
    config: dict | None = None
    use_ema: bool = False
    model: str | None = None
    model_kwargs: dict | None = None

    def load(self, path: str | os.PathLike) -> tuple[nn.Module, Checkpoint]:
        return load_model(path, trust_pickle=self.trust_pickle, arch=self.arch, config=self.config,
                          use_ema=self.use_ema, model=self.model, model_kwargs=self.model_kwargs)


def plan_layouts(plan: FoldPlan) -> dict[str, str]:
    """``{block: layout}`` of a plan's X-volution blocks (what version-1 headers called ``layouts``)."""
    return {name: block["config"]["layout"] for name, block in plan.blocks.items()
            if block.get("family") == "xvolution" and "layout" in block.get("config", {})}


def is_folded(model: nn.Module) -> bool:
    """Whether ``model`` is a deploy form: it carries a fold plan (``xvol_fold_plan``, set by the fold and by
    loading a deploy checkpoint), or holds a registered family's deploy block (``create_model(deploy=True)``)."""
    if isinstance(getattr(model, "xvol_fold_plan", None), FoldPlan):
        return True
    from xvol_export.fold.family import deploy_family

    return any(deploy_family(m) is not None for m in model.modules())


def checkpoint_from_model(model: nn.Module, metadata: dict | None = None) -> Checkpoint:
    """The checkpoint of a model built by :func:`~xvol_export.create_model` or a :class:`ModelSpec` (its
    ``xvol_arch``), in the training form or folded (its ``xvol_fold_plan``, brought up to date with its blocks)."""
    arch = getattr(model, "xvol_arch", None)
    if not arch:
        raise XvolError(
            "The model carries no architecture record (xvol_arch): build it with "
            "xvol_export.create_model (or, for your own model, xvol_export.models.spec.ModelSpec"
            "('package.module:factory').build()) so that a checkpoint can rebuild it."
        )
    plan = getattr(model, "xvol_fold_plan", None)
    if isinstance(plan, dict):
        plan = FoldPlan.from_dict(plan)
    if plan is not None:
        plan = current_plan(model, plan)
    elif is_folded(model):
        spec = ModelSpec(arch["name"])
        try:
            plan = derive_plan(lambda: spec.build(arch["config"]), model)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
            raise XvolError(
                f"The model is in its deploy form but carries no fold plan (xvol_fold_plan), and how it was folded "
                f"cannot be worked out ({_reason(err)}). Fold the training model with xvol_export.fold, whose "
                "deploy model carries its plan."
            ) from None
    return Checkpoint(
        architecture=arch["name"],
        config=dict(arch["config"]),
        state_dict={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        folded=plan is not None,
        metadata=dict(metadata or {}),
        plan=plan,
    )


def save_checkpoint(model_or_ckpt: nn.Module | Checkpoint, path: str | os.PathLike, *,
                    metadata: dict | None = None, force: bool = False, dtype: str | torch.dtype | None = None) -> Path:
    """Write a checkpoint atomically (``.safetensors`` by suffix, else ``.pth``), in format version 2; return its path.

    ``dtype`` (``fp16``, ``bf16``, ``fp32``, ``fp64`` or the torch dtype; ``ValueError`` otherwise)
    writes every floating tensor in that dtype; default: as they are. Integer buffers are unchanged.
    A config that JSON cannot hold (say a factory's default ``act_layer=nn.ReLU``) is refused by name.
    """
    target = resolve_dtype(dtype) if dtype is not None else None  # a bad name fails before any work
    ckpt = model_or_ckpt if isinstance(model_or_ckpt, Checkpoint) else checkpoint_from_model(model_or_ckpt, metadata)
    _check_recordable(ckpt)
    plan = ckpt.plan
    if ckpt.folded and plan is None:  # read from a version-1 file: its plan is worked out once
        plan = ckpt.plan = _version1_plan(ckpt)
    state_dict = ckpt.state_dict
    if target is not None:
        state_dict = {k: v.to(target) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                      for k, v in state_dict.items()}
    meta = {"xvol_version": xvol_export.__version__,
            "created": build_timestamp(),
            **ckpt.metadata, **(metadata or {})}
    # Plain JSON types only, so the file stays loadable with weights_only=True.
    meta = json.loads(json.dumps(meta, default=str))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.architecture,
        "config": plain_config(ckpt.config),
        "folded": ckpt.folded,
        "fold_plan": _plain_plan(plan) if ckpt.folded else None,
        "metadata": meta,
        WEIGHTS_HASH: state_dict_sha256(state_dict),
    }
    path = Path(path)
    size = sum(v.numel() * v.element_size() for v in state_dict.values()) + len(json.dumps(header))  # about
    with atomic_write(path, force, size=size) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, str(tmp), metadata={"xvol": json.dumps(header)})
        else:
            # Through a file object: given a path, torch.save names the archive's root folder after the file,
            # here the temporary one, and two saves of the same weights would differ. (The file keeps the OSError
            # of a failed write, which torch's zip writer replaces with its own RuntimeError.)
            with open_for_native_writer(tmp) as handle:
                torch.save({**header, "state_dict": state_dict}, handle)
    return path


def load_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False, arch: str | None = None,
                    config: dict | None = None, use_ema: bool = False, model: str | None = None,
                    model_kwargs: dict | None = None) -> Checkpoint:
    """Read and check a checkpoint file (no model is built yet).

    ``model`` (or ``arch``) names the model of a plain state dict: a registered name or ``package.module:factory``;
    ``model_kwargs`` (or ``config``) its arguments. A checkpoint of a user's model is read only when ``model``
    names the same factory. ``trust_pickle`` allows files that need full unpickling (it runs code from the file:
    only for files you trust).
    """
    spec, kwargs = _requested_model(arch, config, model, model_kwargs)
    path = check_input_file(path, "checkpoint")  # a named pipe would block for ever
    if not path.exists():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    if path.is_dir():
        raise XvolError(f"{path}: is a folder, not a checkpoint file. Give the path of a .pth or .safetensors file.")
    if _is_safetensors(path):
        ckpt = _read_safetensors(path)
    else:
        ckpt = _read_pth(path, trust_pickle, spec, kwargs, use_ema)
    ckpt.path = path
    ckpt.sha256 = sha256_file(path)
    if is_user_spec(ckpt.architecture) and spec != ckpt.architecture:
        named = f"; you named '{spec}'" if spec else ""
        raise XvolError(
            f"{path}: holds a model built by '{ckpt.architecture}', code that the file names{named}. xvol never "
            f"imports code because a file names it: pass --model {ckpt.architecture} to build it (that module is "
            "then imported: only if you trust it)."
        )
    if spec is not None and spec != ckpt.architecture:
        raise XvolError(f"{path}: holds architecture '{ckpt.architecture}', not '{spec}'. Drop --model/--arch.")
    if kwargs is not None and ckpt.format_version is not None and plain_config(kwargs) != ckpt.config:
        ckpt.notes.append("--model-kwargs not used: the checkpoint records its model's config")
    return ckpt


def build_model(ckpt: Checkpoint) -> nn.Module:
    """Build the checkpoint's model and load it strictly: the training form, or its deploy form (the training
    skeleton with the fold plan applied; a version-1 file: the deploy architecture with its layouts).

    The model is built in the dtype of the file's floating tensors (fp16, bf16, fp32 or fp64).
    """
    user = is_user_spec(ckpt.architecture)
    try:
        if not user:
            get_model_entry(ckpt.architecture)  # unknown architecture: a clear error first
            _check_size(ckpt)  # absurd configs: refused from arithmetic, before any module is built
        model = _construct_on_meta(ckpt)  # no time spent initializing weights that the file replaces
    except XvolError as err:
        raise XvolError(f"{ckpt.label}: {err}") from None
    except (TypeError, ValueError) as err:
        raise XvolError(f"{ckpt.label}: its config does not build '{ckpt.architecture}': {err}.") from None
    # keys (the other form's weights recognized as such), shapes and kinds (float / int / ...)
    check_state_dict(model, ckpt.state_dict, ckpt.label, hint=_form_hint(ckpt))
    dtype = weights_dtype(ckpt.state_dict, ckpt.label)  # one floating dtype, one xvol reads
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # state the file does not hold (non-persistent buffers): build for real, in the file's dtype
        model = _labelled(ckpt, _construct, ckpt)
        if dtype is not None:
            model = model.to(dtype)
        load_state_dict_strict(model, ckpt.state_dict, ckpt.label)
    check_weights(model, ckpt.label)
    _check_weights_hash(ckpt)  # last: an edited file's own problem (a key, a NaN) is named first
    if ckpt.folded and _is_version1(ckpt):
        _attach_version1_plan(model, ckpt)
    return model.eval()


def _check_weights_hash(ckpt: Checkpoint) -> None:
    """Refuse weights whose sha256 is not the one the file's header recorded when it was saved."""
    if ckpt.weights_sha256 is None or state_dict_sha256(ckpt.state_dict) == ckpt.weights_sha256:
        return
    raise XvolError(
        f"{ckpt.label}: is damaged: its weights do not match the sha256 recorded in its header when it was saved "
        f"({WEIGHTS_HASH}), so some of them are not the ones saved. Copy or download it again, or use the original "
        "checkpoint. (Weights edited on purpose after saving: save them with xvol_export.save_checkpoint, which "
        "records their new hash.)"
    )


def _check_size(ckpt: Checkpoint) -> None:
    """Refuse a config whose model cannot be this file's or cannot fit in memory, from arithmetic alone.

    The architecture's size rule checks every config value (types and ranges, :class:`ValueError`) and
    counts the state-dict values the config describes (a lower bound for a deploy checkpoint, whose
    blocks may be dense or split). Far more values than the file holds means the config is not the file's
    (a few keys more or less are left to :func:`check_state_dict`, which names them); more bytes than this
    machine has means no model of it can be built here.
    """
    from xvol_export.models import model_size

    size = model_size(ckpt.architecture, ckpt.config, deploy=ckpt.folded)
    if size is None:  # an architecture without a size rule: its constructor checks what it can
        return
    tensors = [t for t in ckpt.state_dict.values() if isinstance(t, torch.Tensor)]
    held = sum(t.numel() for t in tensors)
    itemsize = max((t.element_size() for t in tensors if t.is_floating_point()), default=4)
    if size.values > 2 * held + 1_000_000:  # far more than the file: before building (a few keys: named later)
        raise XvolError(
            f"its config describes a model of at least {size.values:,} values ({size.summary}), but the file holds "
            f"{held:,}. The config is not the one these weights were trained with (or was edited); use the original "
            "checkpoint, or pass --model-kwargs (--arch-config) with the training config."
        )
    check_fits(size.values * itemsize + size.activation_bytes,
               f"the model its config describes ({size.values:,} values of {itemsize} bytes, and "
               f"{format_bytes(size.activation_bytes)} of activations for one input of its size)",
               "Use a checkpoint of a smaller model, or a machine with more memory.")


def _construct(ckpt: Checkpoint) -> nn.Module:
    """The model of ``ckpt``'s header: the training form, the training skeleton with the fold plan applied, or
    (version 1) the deploy architecture with its layouts."""
    if not ckpt.folded:
        return _training_model(ckpt)
    if _is_version1(ckpt):
        model = create_model(ckpt.architecture, deploy=True, **ckpt.config)
        _apply_layouts(model, ckpt)
        return model
    skeleton = _training_model(ckpt)
    arch, size = skeleton.xvol_arch, getattr(skeleton, "input_size", None)
    try:
        model = apply_fold_plan(skeleton, ckpt.plan)
    except ValueError as err:
        raise XvolError(
            f"its fold plan does not fit {ModelSpec(ckpt.architecture).label} with its config: {err}. The file "
            "was edited, or its config is not the one it was folded with; fold the training checkpoint again."
        ) from None
    model.xvol_arch = arch  # the plan may have replaced the root module
    if size is not None and getattr(model, "input_size", None) is None:
        model.input_size = size
    model.xvol_fold_plan = ckpt.plan
    return model


def _construct_on_meta(ckpt: Checkpoint) -> nn.Module:
    try:
        with torch.device("meta"):
            return _construct(ckpt)
    except XvolError:
        if not is_user_spec(ckpt.architecture):
            raise
    # a user's factory that cannot build on the meta device (it reads values, say): built for real
    return _construct(ckpt)


def _training_model(ckpt: Checkpoint) -> nn.Module:
    return ModelSpec(ckpt.architecture).build(ckpt.config)


def _labelled(ckpt: Checkpoint, function: Callable, *args):
    try:
        return function(*args)
    except XvolError as err:
        raise XvolError(f"{ckpt.label}: {err}") from None


def _is_version1(ckpt: Checkpoint) -> bool:
    return ckpt.format_version == 1 or (ckpt.folded and ckpt.plan is None)


def weights_dtype(state_dict: dict[str, torch.Tensor], label: str) -> torch.dtype | None:
    """The one floating dtype of ``state_dict``'s tensors (``None`` if it holds none).

    :class:`XvolError` naming two keys when floating dtypes are mixed (integer buffers such as
    BatchNorm's ``num_batches_tracked`` do not count), or naming the keys of a floating dtype that
    xvol does not read (not one of :data:`DTYPES`).
    """
    first: dict[torch.dtype, str] = {}
    for key, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            first.setdefault(tensor.dtype, key)
    unsupported = [f"{key} ({describe_dtype(dt)})" for dt, key in first.items() if dt not in DTYPES.values()]
    if unsupported:
        raise XvolError(
            f"{label}: holds floating tensors of a dtype xvol does not read: {_listing(unsupported)}. "
            f"Cast the weights to one of {', '.join(DTYPES)} and save them again."
        )
    if len(first) > 1:
        (dt_a, key_a), (dt_b, key_b) = list(first.items())[:2]
        others = f" (and {len(first) - 2} more dtype(s))" if len(first) > 2 else ""
        raise XvolError(
            f"{label}: mixes floating dtypes: {key_a} is {describe_dtype(dt_a)} but {key_b} is "
            f"{describe_dtype(dt_b)}{others}. A checkpoint holds its weights in one dtype: cast the model "
            "to one (e.g. model.float() or model.half()) and save it again."
        )
    return next(iter(first), None)


def check_refold(ckpt: Checkpoint, layout: str) -> None:
    """Refuse to fold a deploy checkpoint ``ckpt`` with a ``layout`` it was not folded with.

    Nothing to check for a training checkpoint, for ``layout="auto"`` or when every block already
    has ``layout`` (a block without a dilated branch has a single deploy form and always matches).
    Otherwise :class:`XvolError` naming the file and the layouts it has.
    """
    if layout not in LAYOUTS + ("auto",):
        raise ValueError(f"layout must be one of {LAYOUTS + ('auto',)}, got {layout!r}")
    if not ckpt.folded or layout == "auto" or not ckpt.layouts:
        return
    single_form = _single_form_blocks(ckpt)
    if all(have == layout or name in single_form for name, have in ckpt.layouts.items()):
        return
    counts: dict[str, int] = {}
    for have in ckpt.layouts.values():
        counts[have] = counts.get(have, 0) + 1
    has = " and ".join(f"{name} for {n} block(s)" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    raise XvolError(
        f"{ckpt.label}: is a deploy checkpoint, already folded with {has}, so --layout {layout} cannot apply "
        f"to it. Fold the training checkpoint again with --layout {layout}; a deploy checkpoint cannot change "
        "its layout."
    )


def _single_form_blocks(ckpt: Checkpoint) -> set[str]:
    """Deploy blocks without a dilated branch: one 3x3 conv whatever layout was asked for."""
    if ckpt.plan is not None:
        return {name for name, block in ckpt.plan.blocks.items()
                if block.get("family") == "xvolution" and block.get("config", {}).get("dilated_branch") is False}
    try:
        _check_size(ckpt)
        with torch.device("meta"):
            model = _construct(ckpt)
    except (XvolError, TypeError, ValueError):
        return set()  # cannot tell: every block counts
    return {n for n, m in model.named_modules() if isinstance(m, XVolutionDeploy) and not m.dilated_branch}


def load_model(path: str | os.PathLike, **kwargs) -> tuple[nn.Module, Checkpoint]:
    """:func:`load_checkpoint` then :func:`build_model`."""
    ckpt = load_checkpoint(path, **kwargs)
    return build_model(ckpt), ckpt


def load_state_dict_strict(model: nn.Module, state_dict: dict, label: str, assign: bool = False) -> None:
    """Load every key or fail naming each missing, unexpected, misshapen and wrong-kind one.

    ``assign=True`` makes the model use the given tensors (needed for a model built on ``meta``).
    """
    check_state_dict(model, state_dict, label)
    model.load_state_dict(state_dict, strict=True, assign=assign)


# what a hint returns: the sentence saying what the file holds, and the fix
Hint = Callable[[set, list, list], "tuple[str, str] | None"]


def check_state_dict(model: nn.Module, state_dict: dict, label: str, hint: Hint | None = None) -> None:
    """:class:`XvolError` naming every missing, unexpected and misshapen key, then every key whose
    tensor is of another kind than the model's (integer, bool or complex where the model has a
    floating tensor, or floating where it has an integer one). Floating dtypes may differ.

    ``hint(model_keys, missing, unexpected)`` may recognize what the keys are (the other form's weights, say):
    its sentence and fix then frame the listing."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} key(s) of the wrong shape: {_listing(misshapen)}")
    if problems:
        found = hint(set(expected), missing, unexpected) if hint is not None and (missing or unexpected) else None
        what, fix = found or ("the weights do not match the architecture",
                              "Check that the checkpoint's architecture and config are the ones it was trained with.")
        raise XvolError(f"{label}: {what}: " + "; ".join(problems) + f". {fix}")
    wrong_kind = [
        f"{k} ({describe_dtype(state_dict[k].dtype)} where the model has "
        f"{_KIND_WORDS[dtype_kind(expected[k].dtype)]} tensor)"
        for k in expected
        if dtype_kind(state_dict[k].dtype) != dtype_kind(expected[k].dtype)
    ]
    if wrong_kind:
        raise XvolError(
            f"{label}: {len(wrong_kind)} tensor(s) of the wrong kind: {_listing(wrong_kind)}. The file is damaged "
            "or not this architecture's weights; use the original checkpoint of this architecture."
        )


# ------------------------------------------------------------------------------ training form or deploy form

def _form_hint(ckpt: Checkpoint) -> Hint:
    def hint(model_keys: set, missing: list, unexpected: list) -> tuple[str, str] | None:
        try:
            form = recognize_form(lambda: _training_model(ckpt), model_keys, ckpt.folded, missing, unexpected)
        except Exception:  # noqa: BLE001 - recognition only adds words to the listing, which follows anyway
            return None
        what = ModelSpec(ckpt.architecture).label
        if form == "deploy":
            return (f"holds the weights of a deploy (folded) form, but {what} is built in its training form",
                    "xvol folds and verifies from the training weights: give the training checkpoint, or the deploy "
                    "checkpoint that xvol fold wrote (it records the fold plan that rebuilds the deploy form).")
        if form == "training":
            return ("holds the weights of the training form, but its header says it is folded (a deploy checkpoint)",
                    "The file was edited or damaged: use the training checkpoint (xvol fold folds it), or the "
                    "deploy checkpoint as xvol fold wrote it.")
        return None

    return hint


def _version1_plan(ckpt: Checkpoint) -> FoldPlan:
    """The fold plan of a version-1 deploy checkpoint (which records X-volution layouts only)."""
    try:
        with torch.device("meta"):
            deploy = _construct(ckpt)
        return derive_plan(lambda: _training_model(ckpt), deploy)
    except (XvolError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
        raise XvolError(
            f"{ckpt.label}: a version-1 deploy checkpoint whose fold plan cannot be worked out ({_reason(err)}), so "
            "it cannot be written in version 2. Fold the training checkpoint again."
        ) from None


def _attach_version1_plan(model: nn.Module, ckpt: Checkpoint) -> None:
    """Give a version-1 deploy model its fold plan, so that it saves in version 2 (a note when it cannot)."""
    try:
        plan = derive_plan(lambda: _training_model(ckpt), model)
    except Exception as err:  # noqa: BLE001 - the model loads all the same; only saving it again needs the plan
        ckpt.notes.append(f"version-1 deploy checkpoint: its fold plan cannot be worked out ({_reason(err)}), so it "
                          "cannot be saved in version 2; fold the training checkpoint again for that")
        return
    model.xvol_fold_plan = ckpt.plan = plan


def _check_recordable(ckpt: Checkpoint) -> None:
    if not isinstance(ckpt.config, dict):
        raise XvolError(f"The checkpoint's config is a {type(ckpt.config).__name__}, not a mapping of arguments.")
    problems = config_problems(ckpt.config)
    if problems:
        raise XvolError(
            f"{ModelSpec(ckpt.architecture).label}: its config holds value(s) that a checkpoint cannot record "
            f"(JSON-plain values only: numbers, text, true/false, null, and lists and objects of them): "
            f"{_listing(problems)}. They are the factory's arguments or defaults: give JSON values for them with "
            "--model-kwargs if it takes such values, or name a factory (a small wrapper, say) whose arguments are "
            "all JSON-plain."
        )


def _plain_plan(plan: FoldPlan) -> dict:
    try:
        return json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise XvolError(f"The fold plan holds a value that JSON cannot record ({err}): a block family's "
                        "deploy_config must return JSON-plain values.") from None


def _requested_model(arch: str | None, config: dict | None, model: str | None,
                     model_kwargs: dict | None) -> tuple[str | None, dict | None]:
    """The one model spec and config of ``--model``/``--arch`` and ``--model-kwargs``/``--arch-config``."""
    if arch is not None and model is not None and arch != model:
        raise XvolError(f"--arch '{arch}' and --model '{model}' name different models. Give one: --model.")
    if config is not None and model_kwargs is not None and config != model_kwargs:
        raise XvolError("--arch-config and --model-kwargs give different arguments. Give one: --model-kwargs.")
    spec = model if model is not None else arch
    if spec is not None:
        spec = ModelSpec.parse(spec, "--model" if model is not None else "--arch").name
    kwargs = model_kwargs if model_kwargs is not None else config
    option = "--model-kwargs" if model_kwargs is not None else "--arch-config"
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise XvolError(f"{option} must be a JSON object of argument names and values, e.g. "
                        "'{\"num_classes\": 10}', not a " + type(kwargs).__name__ + ".")
    if kwargs is not None and not is_json_plain(kwargs):
        raise XvolError(f"{option} must hold JSON-plain values only (numbers, text, true/false, null, and lists and "
                        f"objects of them); got {kwargs!r}.")
    given_form = sorted(set(kwargs or {}) & set(FORM_ARGS))
    if given_form:
        raise XvolError(f"{option} gives {', '.join(given_form)}: xvol always builds the training form and folds it "
                        "itself (a deploy checkpoint records how). Drop it, and load the training weights.")
    return spec, kwargs


def _reason(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"{type(err).__name__}: {text}" if not isinstance(err, (ValueError, XvolError)) else str(text)


def check_weights(model: nn.Module, label: str) -> None:
    """Refuse non-finite parameters/buffers and negative BatchNorm running variances."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise XvolError(
            f"{label}: {len(bad)} tensor(s) hold NaN or Inf: {_listing(bad)}. The training run diverged or "
            "the file is damaged; use an earlier checkpoint."
        )
    negative = [
        f"{n}.running_var"
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None and (m.running_var < 0).any()
    ]
    if negative:
        raise XvolError(
            f"{label}: negative BatchNorm running variance in {_listing(negative)}. A variance cannot be "
            "negative: the file is damaged or was edited; use the original checkpoint."
        )


def _apply_layouts(model: nn.Module, ckpt: Checkpoint) -> None:
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, XVolutionDeploy)}
    if set(blocks) != set(ckpt.layouts):
        raise XvolError(
            f"{ckpt.label}: its fold layouts name blocks {sorted(ckpt.layouts)} but the architecture has "
            f"{sorted(blocks)}. The file is inconsistent; fold the training checkpoint again."
        )
    for name, layout in ckpt.layouts.items():
        block = blocks[name]
        if block.layout != layout:
            cfg = {**block.config(), "layout": layout}
            param = next(block.parameters())
            rebuilt = XVolutionDeploy(**cfg).to(device=param.device, dtype=param.dtype)  # the model's dtype
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, rebuilt)


def _read_pth(path: Path, trust_pickle: bool, arch: str | None, config: dict | None, use_ema: bool) -> Checkpoint:
    if path.stat().st_size == 0:
        raise XvolError(f"{path}: is empty (0 bytes). The save was interrupted or the copy failed; copy it again.")
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"  # torch.save's archive format since PyTorch 1.6
    if is_zip:
        _check_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        global_name = re.search(r"GLOBAL ([\w.]+)", str(err))
        if global_name:
            raise XvolError(
                f"{path}: holds pickled Python objects ({global_name.group(1)}, for example a whole nn.Module), "
                "and loading them runs code from the file. Re-save it as a state dict "
                "(xvol_export.checkpoint.save_checkpoint), or pass --trust-pickle if you trust where it came from."
            ) from None
        raise _not_a_checkpoint(path, is_zip) from None
    except Exception:  # noqa: BLE001 - torch.load reports damaged files with many exception types
        raise _not_a_checkpoint(path, is_zip) from None
    if isinstance(obj, nn.Module):
        if getattr(obj, "xvol_arch", None):
            return checkpoint_from_model(obj)
        raise XvolError(
            f"{path}: holds a whole {type(obj).__name__} module with no xvol architecture record. Save its "
            "state_dict() with the architecture name instead (xvol_export.save_checkpoint)."
        )
    if not isinstance(obj, dict):
        raise _not_a_checkpoint(path)
    if obj.get("format") == FORMAT:
        return _from_header(path, obj, obj.get("state_dict"))
    return _from_foreign_dict(path, obj, arch, config, use_ema)


def _check_archive(path: Path) -> None:
    """Refuse, before ``torch.load`` unpacks it, an archive whose members inflate far beyond the file (torch.save
    stores them uncompressed, so a real checkpoint unpacks to its own size) or beyond this machine's memory, and
    then one whose members' bytes do not match their CRC-32 (``torch.load`` does not check it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            _check_archive_size(path, members)
            check_archive_crc(path, archive)
    except XvolError:
        raise
    except Exception:  # noqa: BLE001 - zipfile reports damage with many exception types (BadZipFile, zlib.error, ...)
        return  # torch.load reports the damage; nothing is unpacked before it does


def _check_archive_size(path: Path, members: list[zipfile.ZipInfo]) -> None:
    unpacked = sum(m.file_size for m in members)
    size = path.stat().st_size
    compressed = any(m.compress_type != zipfile.ZIP_STORED for m in members)
    if compressed and unpacked > 4 * size + (16 << 20):
        raise XvolError(
            f"{path}: its archive would unpack to {format_bytes(unpacked)} from a {format_bytes(size)} file. "
            "torch.save stores its members uncompressed, so this is not a checkpoint it wrote (it may be a zip "
            "bomb); nothing was unpacked. Use the original checkpoint."
        )
    check_fits(unpacked, f"{path}: unpacking its archive",
               "Load it on a machine with more memory, or save the weights in a smaller dtype.")


def _is_safetensors(path: Path) -> bool:
    """By content where it says (a zip archive is torch.save's, a JSON header after its 8-byte length is
    safetensors'), else by suffix, in any case (``.SAFETENSORS`` too)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        head = b""
    if head[:4] == b"PK\x03\x04":
        return False
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < path.stat().st_size:
        return True
    return path.suffix.lower() == ".safetensors"


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            sizes = [_safetensors_bytes(handle, key) for key in handle.keys()]  # noqa: SIM118 - not a dict
        check_fits(sum(sizes), f"{path}: its tensors", "Load it on a machine with more memory.")
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise XvolError(
            f"{path}: is not a readable safetensors file ({err}). It may be truncated: copy it again."
        ) from None
    if "xvol" not in meta:
        raise XvolError(
            f"{path}: is a safetensors file without an xvol header, so its architecture is unknown. "
            "Save it with xvol_export.save_checkpoint (or xvol fold), which records the architecture."
        )
    try:
        header = json.loads(meta["xvol"])
    except json.JSONDecodeError:
        raise XvolError(f"{path}: its xvol header is not valid JSON. The file is damaged; save it again.") from None
    if not isinstance(header, dict):
        raise XvolError(f"{path}: its xvol header is a JSON {_json_kind(header)}, not an object with the "
                        "architecture, config and format_version. The file was not written by xvol or was edited; "
                        "save it again with xvol_export.save_checkpoint.")
    return _from_header(path, header, state_dict)


def _safetensors_bytes(handle, key: str) -> int:
    view = handle.get_slice(key)
    dtype = view.get_dtype()
    itemsize = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2}.get(dtype, 1)
    count = 1
    for dim in view.get_shape():
        count *= dim
    return count * itemsize


def _json_kind(value) -> str:
    return {list: "list", str: "string", type(None): "null", bool: "boolean", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def _from_header(path: Path, header: dict, state_dict) -> Checkpoint:
    version = header.get("format_version")
    if "format_version" not in header:
        raise XvolError(
            f"{path}: its header has no format_version, so xvol cannot tell how to read it. The file was not "
            "written by xvol_export.save_checkpoint or was edited; save it again from the model."
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise XvolError(
            f"{path}: its header's format_version is {version!r}, not a version number (xvol writes "
            f"{FORMAT_VERSION}). The file is damaged or was edited; save it again from the model."
        )
    if version > FORMAT_VERSION:
        raise XvolError(
            f"{path}: checkpoint format version {version!r} is newer than this xvol understands "
            f"({FORMAT_VERSION}). Upgrade xvol."
        )
    fields = {"architecture": str, "config": dict, "folded": bool, "metadata": dict,
              **({"layouts": dict} if version == 1 else {})}
    wrong = [k for k, t in fields.items() if not isinstance(header.get(k), t)]
    if version >= 2 and "fold_plan" not in header:
        wrong.append("fold_plan")
    if wrong or not _is_state_dict(state_dict):
        what = ", ".join(wrong + ([] if _is_state_dict(state_dict) else ["state_dict"]))
        raise XvolError(f"{path}: the checkpoint's {what} field(s) are missing or malformed. Save it again.")
    architecture = header["architecture"]
    if is_user_spec(architecture):
        try:
            ModelSpec.parse(architecture)
        except XvolError:
            raise XvolError(f"{path}: its architecture {architecture!r} is neither a registered name nor "
                            "package.module:factory. The file is damaged or was edited; save it again.") from None
    plan = None
    if version >= 2:
        plan = _header_plan(path, header["fold_plan"], header["folded"])
    recorded = header.get(WEIGHTS_HASH)
    if recorded is not None and not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        raise XvolError(f"{path}: its header's {WEIGHTS_HASH} is {str(recorded)[:80]!r}, not a sha256 (64 hex "
                        "digits). The file is damaged or was edited; save it again from the model.")
    return Checkpoint(
        architecture=architecture,
        config=header["config"],
        state_dict=state_dict,
        folded=header["folded"],
        layouts=header["layouts"] if version == 1 else {},
        metadata=header["metadata"],
        plan=plan,
        format_version=version,
        weights_sha256=recorded,
    )


def _header_plan(path: Path, raw, folded: bool) -> FoldPlan | None:
    """The fold plan of a version-2 header: a deploy checkpoint has one, a training checkpoint none."""
    if raw is None:
        if folded:
            raise XvolError(f"{path}: its header says it is folded (a deploy checkpoint) but its fold_plan is null, "
                            "so its deploy form cannot be rebuilt. The file was edited; fold the training "
                            "checkpoint again.")
        return None
    if not folded:
        raise XvolError(f"{path}: its header holds a fold_plan but says it is not folded. The file was edited or "
                        "damaged; save it again from the model.")
    try:
        return FoldPlan.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as err:
        raise XvolError(f"{path}: its fold_plan is malformed: {err}. The file was edited or damaged; fold the "
                        "training checkpoint again.") from None


def _from_foreign_dict(path: Path, obj: dict, spec: str | None, config: dict | None, use_ema: bool) -> Checkpoint:
    """A training script's own dict, or a plain state dict: needs a model spec (``--model``) to be usable."""
    notes = []
    ema_key = next((k for k in _EMA_KEYS if _is_state_dict(obj.get(k))), None)
    main_key = next((k for k in _STATE_DICT_KEYS if _is_state_dict(obj.get(k))), None)
    if use_ema:
        if ema_key is None:
            raise XvolError(f"{path}: --ema was given but the file has no EMA weights ({', '.join(_EMA_KEYS)}).")
        state_dict, notes = obj[ema_key], [f"using the EMA weights '{ema_key}'"]
    elif main_key is not None:
        state_dict = obj[main_key]
        if ema_key:
            notes.append(f"the file also holds EMA weights '{ema_key}'; pass --ema to use them")
    elif ema_key is not None:  # only EMA weights (a script that keeps the averaged model alone)
        state_dict, notes = obj[ema_key], [f"using the EMA weights '{ema_key}' (the file holds no others)"]
    elif _is_state_dict(obj):
        state_dict = obj
    else:
        raise _not_a_checkpoint(path)
    named = obj.get("architecture") or obj.get("arch")
    named = named if isinstance(named, str) else None
    if spec is None and named is not None and is_user_spec(named):
        raise XvolError(
            f"{path}: names its model '{named}', code that xvol never imports because a file names it. Pass "
            f"--model {named} to build it (that module is then imported: only if you trust it)."
        )
    arch = spec if spec is not None else named
    if arch is None:
        raise XvolError(
            f"{path}: is a plain state dict with no architecture name. Pass --model NAME (or --arch NAME; one of: "
            f"{', '.join(xvol_export.list_models())}) or, for your own model, --model package.module:factory "
            "(with --model-kwargs for its arguments); or save it with xvol_export.save_checkpoint."
        )
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise _not_a_checkpoint(path)
    # the file's own config only for the model it names (a training script's 'config' may be anything else)
    found_config = config if config is not None else (obj.get("config") if arch == named else None) or {}
    if not isinstance(found_config, dict):
        raise XvolError(f"{path}: its 'config' is a {type(found_config).__name__}, not a mapping of the "
                        "architecture's arguments. Pass --model-kwargs JSON, or save the model with "
                        "xvol_export.save_checkpoint.")
    state_dict, stripped = _strip_wrapper_prefixes(state_dict)
    if stripped:
        notes.append(f"stripped the '{stripped}' prefix from every key")
    # the training form: weights of a deploy form are recognized, and named, when they do not fit it
    return Checkpoint(architecture=arch, config=dict(found_config), state_dict=state_dict, notes=notes)


def _strip_wrapper_prefixes(state_dict: dict) -> tuple[dict, str]:
    stripped = ""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped += prefix
                changed = True
    return state_dict, stripped


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _not_a_checkpoint(path: Path, is_zip: bool = False) -> XvolError:
    if is_zip and not zipfile.is_zipfile(path):
        return XvolError(f"{path}: is truncated or damaged (its archive cannot be read). Copy or download it again.")
    return XvolError(
        f"{path}: is not a PyTorch checkpoint that xvol can read. Expected a .pth/.pt file written by "
        "torch.save (an xvol checkpoint or a state dict) or an xvol .safetensors file."
    )


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
