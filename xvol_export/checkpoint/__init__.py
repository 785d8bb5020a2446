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

One job per module: :mod:`.format` (the files and their guards), :mod:`.header` (the header, versions 1 and 2),
:mod:`.legacy` (version-1 deploy checkpoints), :mod:`.foreign` (training scripts' dicts), :mod:`.build` (the model,
built on the meta device), :mod:`.state_dict` (strict checks of the weights), :mod:`.refold` (folding a deploy
checkpoint again), :mod:`.load` and :mod:`.save` (the entry points).
"""

from xvol_export.checkpoint.build import build_model
from xvol_export.checkpoint.format import SUFFIXES
from xvol_export.checkpoint.header import FORMAT, FORMAT_VERSION, WEIGHTS_HASH
from xvol_export.checkpoint.load import LoadOptions, load_checkpoint, load_model
from xvol_export.checkpoint.record import Checkpoint, plan_layouts
from xvol_export.checkpoint.refold import check_refold
from xvol_export.checkpoint.save import checkpoint_from_model, is_folded, save_checkpoint
from xvol_export.checkpoint.state_dict import check_state_dict, check_weights, load_state_dict_strict, weights_dtype
from xvol_export.dtypes import DTYPES, dtype_name

__all__ = [
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIXES",
    "WEIGHTS_HASH",
    "Checkpoint",
    "LoadOptions",
    "build_model",
    "check_refold",
    "check_state_dict",
    "check_weights",
    "checkpoint_from_model",
    "dtype_name",
    "is_folded",
    "load_checkpoint",
    "load_model",
    "load_state_dict_strict",
    "plan_layouts",
    "save_checkpoint",
    "weights_dtype",
]
