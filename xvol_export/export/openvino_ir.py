"""OpenVINO IR from a verified ONNX graph: ``NAME.xml`` with its weights in ``NAME.bin``, written atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx

from xvol_export.cleanup import temporary_folder
from xvol_export.io import check_output_path
from xvol_export.metadata_keys import rt_info_path


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

    with temporary_folder() as tmp:
        source = os.path.join(tmp, "graph.onnx")
        onnx.save_model(graph, source)
        model = ov.convert_model(source)
    _number_generated_names(model, {node.name for node in graph.graph.node})
    for key, value in metadata.items():
        model.set_rt_info(value, rt_info_path(key))
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)
    return list(ir_files(path))


def _number_generated_names(model, graph_names: set[str]) -> None:
    """Rename the nodes OpenVINO named itself (``Reshape_11997``: a counter of the whole process, kept by the
    constants it folds) by their place in the graph, so that the same graph gives the same IR in any process."""
    for index, op in enumerate(model.get_ordered_ops()):
        name = op.get_friendly_name()
        generated = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)(_\d+)+", name)
        if generated and name not in graph_names:
            op.set_friendly_name(f"{generated.group(1)}_xvol{index}")


def move_into_place(staged: Path, path: str | os.PathLike, force: bool) -> list[Path]:
    """Rename a staged ``.xml`` and ``.bin`` over ``path`` (weights first, so an ``.xml`` never points at
    missing weights)."""
    xml, weights = ir_files(path)
    for target in (xml, weights):
        check_output_path(target, force)
    os.replace(staged.with_suffix(".bin"), weights)
    os.replace(staged, xml)
    return [xml, weights]
