"""Training scripts' own checkpoint dicts and bare state dicts: where the weights are (EMA or not), the prefixes
training wrappers add to every key, and the model they need named."""

from __future__ import annotations

from pathlib import Path

from xvol_export.checkpoint.format import not_a_checkpoint
from xvol_export.checkpoint.record import Checkpoint
from xvol_export.checkpoint.state_dict import is_state_dict
from xvol_export.errors import XvolError
from xvol_export.models import list_models
from xvol_export.models.spec import is_user_spec
from xvol_export.naming import assignment, setting

# Prefixes that training wrappers add to every key (DataParallel/DDP, Lightning, torch.compile).
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Where common training scripts keep the weights inside their own checkpoint dicts.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def from_foreign_dict(path: Path, obj: dict, spec: str | None, config: dict | None, use_ema: bool) -> Checkpoint:
    """The training-form checkpoint of a training script's dict or a plain state dict ``obj``: ``spec`` names its
    model where the file does not (and must, where the file names a user's factory), ``config`` its arguments."""
    state_dict, notes = _weights(path, obj, use_ema)
    named = obj.get("architecture") or obj.get("arch")
    named = named if isinstance(named, str) else None
    if spec is None and named is not None and is_user_spec(named):
        raise XvolError(
            f"{path}: names its model '{named}', code that xvol never imports because a file names it. Pass "
            f"{assignment('model', named)} to build it (that module is then imported: only if you trust it)."
        )
    arch = spec if spec is not None else named
    if arch is None:
        raise XvolError(
            f"{path}: is a plain state dict with no architecture name. Pass {assignment('model', 'NAME')} (or "
            f"{assignment('arch', 'NAME')}; one of: {', '.join(list_models())}) or, for your own model, "
            f"{assignment('model', 'package.module:factory')} (with {setting('model_kwargs')} for its arguments); "
            "or save it with xvol_export.save_checkpoint."
        )
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise not_a_checkpoint(path)
    # the file's own config only for the model it names (a training script's 'config' may be anything else)
    found_config = config if config is not None else (obj.get("config") if arch == named else None) or {}
    if not isinstance(found_config, dict):
        raise XvolError(f"{path}: its 'config' is a {type(found_config).__name__}, not a mapping of the "
                        f"architecture's arguments. Pass {setting('model_kwargs')} JSON, or save the model with "
                        "xvol_export.save_checkpoint.")
    state_dict, stripped = _strip_wrapper_prefixes(state_dict)
    if stripped:
        notes.append(f"stripped the '{stripped}' prefix from every key")
    # the training form: weights of a deploy form are recognized, and named, when they do not fit it
    return Checkpoint(architecture=arch, config=dict(found_config), state_dict=state_dict, notes=notes)


def _weights(path: Path, obj: dict, use_ema: bool) -> tuple[dict, list[str]]:
    """The state dict the file holds (its EMA weights if ``use_ema``) and notes on the choice."""
    notes = []
    ema_key = next((k for k in _EMA_KEYS if is_state_dict(obj.get(k))), None)
    main_key = next((k for k in _STATE_DICT_KEYS if is_state_dict(obj.get(k))), None)
    if use_ema:
        if ema_key is None:
            raise XvolError(f"{path}: {assignment('use_ema', True)} was given but the file has no EMA weights "
                            f"({', '.join(_EMA_KEYS)}).")
        return obj[ema_key], [f"using the EMA weights '{ema_key}'"]
    if main_key is not None:
        if ema_key:
            notes.append(f"the file also holds EMA weights '{ema_key}'; pass {assignment('use_ema', True)} to use "
                         "them")
        return obj[main_key], notes
    if ema_key is not None:  # only EMA weights (a script that keeps the averaged model alone)
        return obj[ema_key], [f"using the EMA weights '{ema_key}' (the file holds no others)"]
    if is_state_dict(obj):
        return obj, notes
    raise not_a_checkpoint(path)


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
