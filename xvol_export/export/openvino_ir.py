"""OpenVINO IR from a verified ONNX graph: ``NAME.xml`` with its weights in ``NAME.bin``, written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from xvol_export.io import check_output_path

# metadata key (rt_info xvol/inference_precision) of the precision OpenVINO is to compute the IR in
INFERENCE_PRECISION_KEY = "xvol.inference_precision"


def ir_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``model.xml`` -> (``model.xml``, ``model.bin``)."""
    xml = Path(path)
    return xml, xml.with_suffix(".bin")


def save_ir(graph: onnx.ModelProto, path: str | os.PathLike, metadata: dict[str, str],
            compress_to_fp16: bool = False) -> list[Path]:
    """Convert ``graph`` with OpenVINO's ``convert_model`` and save it as IR at ``path`` (and ``.bin``).

    Weights stay in the graph's precision: OpenVINO's own default would store fp32 weights in fp16,
    so ``compress_to_fp16`` is off unless asked. ``metadata`` goes into the IR's ``rt_info`` under ``xvol``.
    """
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="xvol-ir-") as tmp:
        source = os.path.join(tmp, "graph.onnx")
        onnx.save_model(graph, source)
        model = ov.convert_model(source)
    for key, value in metadata.items():
        model.set_rt_info(value, ["xvol", key.removeprefix("xvol.")])
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)
    return list(ir_files(path))


def move_into_place(staged: Path, path: str | os.PathLike, force: bool) -> list[Path]:
    """Rename a staged ``.xml`` and ``.bin`` over ``path`` (weights first, so an ``.xml`` never points at
    missing weights)."""
    xml, weights = ir_files(path)
    for target in (xml, weights):
        check_output_path(target, force)
    os.replace(staged.with_suffix(".bin"), weights)
    os.replace(staged, xml)
    return [xml, weights]


def staging_folder(path: str | os.PathLike) -> Path:
    """A hidden folder beside ``path`` for files that are renamed into place once checked."""
    path = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
