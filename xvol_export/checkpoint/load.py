"""Loading: a checkpoint file read into a :class:`Checkpoint` (an xvol file, a training script's dict, a state
dict), then its model built; and the model the caller names checked against the file's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from xvol_export.checkpoint.build import build_model
from xvol_export.checkpoint.foreign import from_foreign_dict
from xvol_export.checkpoint.format import is_safetensors, not_a_checkpoint, read_pth, read_safetensors
from xvol_export.checkpoint.header import FORMAT, from_header
from xvol_export.checkpoint.record import Checkpoint
from xvol_export.checkpoint.save import checkpoint_from_model
from xvol_export.errors import XvolError
from xvol_export.io import sha256_file
from xvol_export.limits import check_input_file
from xvol_export.models.registry import FORM_ARGS
from xvol_export.models.spec import ModelSpec, is_json_plain, is_user_spec, plain_config
from xvol_export.naming import assignment, setting


@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint: the arguments of :func:`load_checkpoint`, kept together.

    ``model``: a registered name or a user's ``package.module:factory``, for a plain state dict or a training
    script's dict, and required to read back a checkpoint of a user's model (a factory a file names is never
    imported unless given here); ``model_kwargs``: its JSON-plain arguments. ``arch`` and ``config`` are the same
    for registered names. ``use_ema``: the EMA weights of a training script's dict; ``trust_pickle``: allow files
    that need full unpickling.
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
    if is_safetensors(path):
        ckpt = from_header(path, *read_safetensors(path))
    else:
        ckpt = _from_pth(path, trust_pickle, spec, kwargs, use_ema)
    ckpt.path = path
    ckpt.sha256 = sha256_file(path)
    if is_user_spec(ckpt.architecture) and spec != ckpt.architecture:
        named = f"; you named '{spec}'" if spec else ""
        raise XvolError(
            f"{path}: holds a model built by '{ckpt.architecture}', code that the file names{named}. xvol never "
            f"imports code because a file names it: pass {assignment('model', ckpt.architecture)} to build it (that "
            "module is then imported: only if you trust it)."
        )
    if spec is not None and spec != ckpt.architecture:
        raise XvolError(f"{path}: holds architecture '{ckpt.architecture}', not '{spec}'. "
                        f"Drop {setting('model')}/{setting('arch')}.")
    if kwargs is not None and ckpt.format_version is not None and plain_config(kwargs) != ckpt.config:
        ckpt.notes.append(f"{setting('model_kwargs')} not used: the checkpoint records its model's config")
    return ckpt


def load_model(path: str | os.PathLike, **kwargs) -> tuple[nn.Module, Checkpoint]:
    """:func:`load_checkpoint` then :func:`build_model`."""
    ckpt = load_checkpoint(path, **kwargs)
    return build_model(ckpt), ckpt


def _from_pth(path: Path, trust_pickle: bool, spec: str | None, config: dict | None, use_ema: bool) -> Checkpoint:
    obj = read_pth(path, trust_pickle)
    if isinstance(obj, nn.Module):
        if getattr(obj, "xvol_arch", None):
            return checkpoint_from_model(obj)
        raise XvolError(
            f"{path}: holds a whole {type(obj).__name__} module with no xvol architecture record. Save its "
            "state_dict() with the architecture name instead (xvol_export.save_checkpoint)."
        )
    if not isinstance(obj, dict):
        raise not_a_checkpoint(path)
    if obj.get("format") == FORMAT:
        return from_header(path, obj, obj.get("state_dict"))
    return from_foreign_dict(path, obj, spec, config, use_ema)


def _requested_model(arch: str | None, config: dict | None, model: str | None,
                     model_kwargs: dict | None) -> tuple[str | None, dict | None]:
    """The one model spec and config of ``model``/``arch`` and ``model_kwargs``/``config``."""
    if arch is not None and model is not None and arch != model:
        raise XvolError(f"{setting('arch')} '{arch}' and {setting('model')} '{model}' name different models. "
                        f"Give one: {setting('model')}.")
    if config is not None and model_kwargs is not None and config != model_kwargs:
        raise XvolError(f"{setting('config')} and {setting('model_kwargs')} give different arguments. "
                        f"Give one: {setting('model_kwargs')}.")
    spec = model if model is not None else arch
    if spec is not None:
        spec = ModelSpec.parse(spec, setting("model") if model is not None else setting("arch")).name
    kwargs = model_kwargs if model_kwargs is not None else config
    option = setting("model_kwargs") if model_kwargs is not None else setting("config")
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
