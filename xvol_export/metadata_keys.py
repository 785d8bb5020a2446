"""The keys xvol writes into an artifact's metadata, in one place.

An ONNX graph holds them in ``metadata_props`` (``xvol.NAME``); an OpenVINO IR in its ``rt_info`` under
``xvol`` / ``NAME`` (:func:`rt_info_path`). Graph, IR, runners and jobs read and write them by these names.
"""

from __future__ import annotations

PREFIX = "xvol."

VERSION = "xvol.version"
SOURCE_SHA256 = "xvol.source_sha256"
ARCHITECTURE = "xvol.architecture"
CONFIG = "xvol.config"
FOLD_LAYOUT = "xvol.fold_layout"
DEPLOY_OPTIONS = "xvol.deploy_options"
PRECISION = "xvol.precision"  # the precision in the graph: fp32, fp16 or int8
EXPORTER = "xvol.exporter"
SIMPLIFIER = "xvol.simplifier"
INPUT_SHAPE = "xvol.input_shape"  # the shape the graph was exported at (NxCxHxW)
DYNAMIC = "xvol.dynamic"
VERIFIED = "xvol.verified"  # the export's verification summary
INFERENCE_PRECISION = "xvol.inference_precision"  # what OpenVINO is to compute an IR in
INT8_CALIBRATION = "xvol.int8_calibration"  # method and number of calibration images
INT8_FALLBACK = "xvol.int8_fallback"  # budget, layers kept in float and why, figures
INT8_LAYOUT = "xvol.int8_layout"  # the Int8Layout: target, activations, weight bits, ISA


def rt_info_path(key: str) -> list[str]:
    """Where an OpenVINO IR's ``rt_info`` holds ``key``: ``xvol.inference_precision`` -> ``["xvol",
    "inference_precision"]``."""
    return ["xvol", key.removeprefix(PREFIX)]
