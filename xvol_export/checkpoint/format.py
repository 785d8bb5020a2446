"""Checkpoint files: ``.pth`` (torch.save's archive) and ``.safetensors``, read behind guards and written atomically.

Before ``torch.load`` unpacks a ``.pth`` archive, its members' sizes are checked against the file and this
machine's memory, and their bytes against their CRC-32; pickled objects are refused unless trusted.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from xvol_export.errors import XvolError
from xvol_export.integrity import check_archive_crc
from xvol_export.io import CHECKPOINT_SUFFIXES, atomic_write, open_for_native_writer
from xvol_export.limits import check_fits, format_bytes
from xvol_export.naming import assignment

SUFFIXES = CHECKPOINT_SUFFIXES
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format since PyTorch 1.6


def is_safetensors(path: Path) -> bool:
    """By content where it says (a zip archive is torch.save's, a JSON header after its 8-byte length is
    safetensors'), else by suffix, in any case (``.SAFETENSORS`` too)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        head = b""
    if head[:4] == _ZIP_MAGIC:
        return False
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < path.stat().st_size:
        return True
    return path.suffix.lower() == ".safetensors"


def read_pth(path: Path, trust_pickle: bool) -> object:
    """What ``torch.load`` finds in ``path`` (pickled objects only if ``trust_pickle``), once its archive passed
    the guards; :class:`XvolError` for an empty, damaged or foreign file."""
    if path.stat().st_size == 0:
        raise XvolError(f"{path}: is empty (0 bytes). The save was interrupted or the copy failed; copy it again.")
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == _ZIP_MAGIC
    if is_zip:
        _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        global_name = re.search(r"GLOBAL ([\w.]+)", str(err))
        if global_name:
            raise XvolError(
                f"{path}: holds pickled Python objects ({global_name.group(1)}, for example a whole nn.Module), "
                "and loading them runs code from the file. Re-save it as a state dict "
                f"(xvol_export.checkpoint.save_checkpoint), or pass {assignment('trust_pickle', True)} if you "
                "trust where it came from."
            ) from None
        raise not_a_checkpoint(path, is_zip) from None
    except Exception:  # noqa: BLE001 - torch.load reports damaged files with many exception types
        raise not_a_checkpoint(path, is_zip) from None


def read_safetensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The xvol header (a JSON object) and the tensors of a safetensors file."""
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
    return header, state_dict


def write_checkpoint_file(path: Path, header: dict, state_dict: dict[str, torch.Tensor], force: bool) -> None:
    """Write ``header`` and ``state_dict`` atomically: ``.safetensors`` by suffix (the header as JSON in its
    metadata), else a ``.pth`` of one plain dict, loadable with ``torch.load(weights_only=True)``."""
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


def not_a_checkpoint(path: Path, is_zip: bool = False) -> XvolError:
    """The error for a file that holds no checkpoint xvol reads (a damaged archive said as such)."""
    if is_zip and not zipfile.is_zipfile(path):
        return XvolError(f"{path}: is truncated or damaged (its archive cannot be read). Copy or download it again.")
    return XvolError(
        f"{path}: is not a PyTorch checkpoint that xvol can read. Expected a .pth/.pt file written by "
        "torch.save (an xvol checkpoint or a state dict) or an xvol .safetensors file."
    )


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
