"""Whether a checkpoint's bytes are the ones that were written: the CRC-32 of each member of a ``.pth`` archive, and
the sha256 of a state dict's tensors that :func:`~xvol_export.checkpoint.save_checkpoint` records in its header.

``torch.load`` checks neither: a flipped bit in a tensor loads, folds and exports without a word.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import torch

from xvol_export.errors import XvolError

_CHUNK = 4 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's tensors: for each key in sorted order, a record of the key, dtype and shape,
    then the tensor's bytes in C order (as this machine stores them: little-endian wherever PyTorch runs). The same
    weights give the same hash whatever the file format, the key order or the tensors' strides."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        record = json.dumps([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode()
        digest.update(len(record).to_bytes(8, "little"))
        digest.update(record)
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        data = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)  # no copy if contiguous
        digest.update(data.numpy())
    return digest.hexdigest()


def check_archive_crc(path: Path, archive: zipfile.ZipFile) -> None:
    """Read every member of a ``.pth`` archive (``torch.save``'s zip) and refuse, naming the file and the member, one
    whose bytes do not match the CRC-32 the archive recorded for it. Members recorded with a CRC of 0 (an archive
    written with ``torch.serialization.set_crc32_options(False)``) are not checked."""
    for info in archive.infolist():
        if info.CRC == 0 and info.file_size:
            continue  # no checksum was recorded
        try:
            with archive.open(info) as member:  # zipfile compares the CRC-32 once the member is read to its end
                while member.read(_CHUNK):
                    pass
        except zipfile.BadZipFile as err:
            if "CRC" not in str(err):
                raise
            raise XvolError(f"{path}: is damaged: the bytes of its member '{info.filename}' do not match the "
                            "checksum (CRC-32) the archive recorded when it was written, so some of its weights are "
                            "not the ones saved. Copy or download it again, or use the original checkpoint.") from None
