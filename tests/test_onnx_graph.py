"""xvol_export.export.onnx_graph, step by step, with the real onnx, onnxruntime, onnxslim and onnxsim:
opset ranges, both exporters, symbolic dims, simplifiers, metadata, atomic saves and external data."""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import xvol_export
from xvol_export import graph_info
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph

from helpers import randomize_bn, rel_l2

TOL = 1e-5
STATIC_SHAPE = (2, 3, 32, 32)
# batch and image size both change, with odd and non-square sizes (the tiny net has two stride-2 stages)
OTHER_SHAPES = [(1, 3, 32, 32), (3, 3, 40, 24), (2, 3, 17, 29)]
STANDARD_DOMAINS = ("", "ai.onnx")


# ------------------------------------------------------------------------------------------ helpers

def session(model: onnx.ModelProto | str | os.PathLike) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    assert [i.name for i in sess.get_inputs()] == [onnx_graph.INPUT_NAME]
    return sess.run([onnx_graph.OUTPUT_NAME], {onnx_graph.INPUT_NAME: x})[0]


def inputs(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_out(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.from_numpy(x))


def assert_matches(model_onnx, torch_model: torch.nn.Module, shape, seed: int = 0) -> float:
    x = inputs(shape, seed)
    got = run_onnx(model_onnx, x)
    expected = torch_out(torch_model, x)
    assert got.shape == tuple(expected.shape)
    err = rel_l2(torch.from_numpy(got), expected)
    assert err < TOL, (shape, err)
    return err


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def files_in(folder) -> list[str]:
    return sorted(os.listdir(folder))  # hidden temporaries included


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def models():
    """The eval-mode tiny training model (random BN statistics) and its deploy form."""
    torch.manual_seed(0)
    model = xvol_export.create_model("xvol_resnet_tiny", blocks_per_stage=1)
    assert randomize_bn(model, torch.Generator().manual_seed(11)) > 0
    model.eval()
    deploy, report = xvol_export.fold(model)
    assert report.blocks  # at least one X-volution block really folded
    return model, deploy


@pytest.fixture(scope="module")
def static_graph(models):
    return onnx_graph.check_graph(onnx_graph.export_onnx(models[1], STATIC_SHAPE))


@pytest.fixture(scope="module")
def dynamic_graph(models):
    return onnx_graph.check_graph(onnx_graph.export_onnx(models[1], STATIC_SHAPE, dynamic=True))


@pytest.fixture
def static_copy(static_graph):
    copy = onnx.ModelProto()
    copy.CopyFrom(static_graph)
    return copy


# -------------------------------------------------------------------------------------------- opsets

@pytest.mark.parametrize("exporter, opset", [("torchscript", o) for o in range(17, 21)]
                         + [("dynamo", o) for o in range(18, 24)])
def test_check_opset_accepts_supported(exporter, opset):
    assert onnx_graph.check_opset(opset, exporter) is None


@pytest.mark.parametrize("exporter, opset, words", [
    ("torchscript", 16, ["Opset 16", "torchscript", "17 to 20", "17 or newer", "between 17 and 20"]),
    ("torchscript", 21, ["Opset 21", "torchscript", "17 to 20", "between 17 and 20"]),
    ("dynamo", 17, ["Opset 17", "dynamo", "18 to 23", "between 18 and 23"]),
    ("dynamo", 24, ["Opset 24", "dynamo", "18 to 23"]),
])
def test_check_opset_rejects_unsupported(exporter, opset, words):
    with pytest.raises(XvolError) as info:
        onnx_graph.check_opset(opset, exporter)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_check_opset_rejects_unknown_exporter():
    with pytest.raises(XvolError, match=r"Unknown exporter 'tflite'.*torchscript, dynamo"):
        onnx_graph.check_opset(17, "tflite")


def test_export_onnx_checks_opset_first(models):
    with pytest.raises(XvolError, match="Opset 13"):
        onnx_graph.export_onnx(models[1], STATIC_SHAPE, opset=13)


# --------------------------------------------------------------------------------------- export

def test_torchscript_export_matches_pytorch(models, static_graph):
    model, deploy = models
    g = static_graph
    assert [i.name for i in g.graph.input] == [onnx_graph.INPUT_NAME]
    assert [o.name for o in g.graph.output] == [onnx_graph.OUTPUT_NAME]
    assert graph_info.input_dims(g) == list(STATIC_SHAPE)
    assert {o.domain for o in g.opset_import} <= set(STANDARD_DOMAINS)
    assert max(o.version for o in g.opset_import if o.domain in STANDARD_DOMAINS) == onnx_graph.DEFAULT_OPSET
    assert all(n.domain in STANDARD_DOMAINS for n in g.graph.node)  # no custom operators
    ops = graph_info.op_counts(g)
    assert "BatchNormalization" not in ops
    assert ops["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules())
    assert ops["Softmax"] == sum(isinstance(m, xvol_export.XVolutionDeploy) for m in deploy.modules())
    assert_matches(g, deploy, STATIC_SHAPE, seed=1)
    assert_matches(g, model, STATIC_SHAPE, seed=2)  # and the training form it was folded from


def test_export_opset_20(models):
    g = onnx_graph.check_graph(onnx_graph.export_onnx(models[1], STATIC_SHAPE, opset=20))
    assert {o.version for o in g.opset_import if o.domain in STANDARD_DOMAINS} == {20}
    assert_matches(g, models[0], STATIC_SHAPE, seed=3)


def test_dynamo_export_dynamic_matches_pytorch(models):
    """The dynamo exporter, once (it takes several seconds): symbolic dims, results at other shapes."""
    model, deploy = models
    raw = onnx_graph.export_onnx(deploy, STATIC_SHAPE, opset=18, dynamic=True, exporter="dynamo")
    g = onnx_graph.check_graph(raw)
    assert {o.version for o in g.opset_import if o.domain in STANDARD_DOMAINS} == {18}
    assert all(n.domain in STANDARD_DOMAINS for n in g.graph.node)
    assert graph_info.input_dims(g) == ["batch", 3, "height", "width"]
    assert "BatchNormalization" not in graph_info.op_counts(g)
    for seed, shape in enumerate([STATIC_SHAPE, *OTHER_SHAPES]):
        assert_matches(g, model, shape, seed=seed)


def test_export_keeps_the_model_unchanged(models):
    _, deploy = models
    before = {k: v.clone() for k, v in deploy.state_dict().items()}
    onnx_graph.export_onnx(deploy, (1, 3, 16, 16))
    assert not deploy.training
    after = deploy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------ dynamic dims

def test_dynamic_export_keeps_symbolic_dims_and_runs_at_other_shapes(models, dynamic_graph):
    model, _ = models
    assert graph_info.input_dims(dynamic_graph) == ["batch", 3, "height", "width"]
    out_dims = dynamic_graph.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 10
    for seed, shape in enumerate([STATIC_SHAPE, *OTHER_SHAPES]):
        assert_matches(dynamic_graph, model, shape, seed=seed)


def test_static_export_refuses_other_shapes(static_graph):
    assert all(isinstance(d, int) for d in graph_info.input_dims(static_graph))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_onnx(static_graph, inputs((1, 3, 40, 24)))


@pytest.mark.parametrize("simplifier", onnx_graph.SIMPLIFIERS)
def test_simplified_dynamic_graph_keeps_symbolic_dims(models, dynamic_graph, simplifier):
    model, _ = models
    simplified = onnx_graph.check_graph(onnx_graph.simplify(dynamic_graph, simplifier))
    assert graph_info.input_dims(simplified) == ["batch", 3, "height", "width"]
    assert simplified.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert len(simplified.graph.node) < len(dynamic_graph.graph.node)
    for seed, shape in enumerate([STATIC_SHAPE, *OTHER_SHAPES]):
        assert_matches(simplified, model, shape, seed=seed)


# ----------------------------------------------------------------------------------------- simplify

@pytest.mark.parametrize("simplifier", onnx_graph.SIMPLIFIERS)
def test_simplifier_keeps_results_and_shrinks_graph(models, static_graph, simplifier):
    model, deploy = models
    before = graph_info.op_counts(static_graph)
    simplified = onnx_graph.check_graph(onnx_graph.simplify(static_graph, simplifier))
    # the input graph stays the unsimplified one (the export job falls back to it); onnxslim only names
    # the tensors inside Constant nodes in place, which changes nothing that runs
    assert graph_info.op_counts(static_graph) == before
    assert len(simplified.graph.node) < len(static_graph.graph.node)
    ops = graph_info.op_counts(simplified)
    assert "Constant" not in ops  # folded into initializers
    assert ops["Conv"] == graph_info.op_counts(static_graph)["Conv"]
    assert graph_info.input_dims(simplified) == list(STATIC_SHAPE)
    assert_matches(simplified, model, STATIC_SHAPE, seed=4)
    assert_matches(simplified, deploy, STATIC_SHAPE, seed=5)


def test_simplify_rejects_unknown_simplifier(static_graph):
    with pytest.raises(XvolError, match=r"Unknown simplifier 'polygraphy'.*onnxslim, onnxsim"):
        onnx_graph.simplify(static_graph, "polygraphy")


# ------------------------------------------------------------------------------- check, op counts

def test_check_graph_returns_shape_inferred_model(static_graph, models):
    raw = onnx_graph.export_onnx(models[1], STATIC_SHAPE)
    raw_value_info = len(raw.graph.value_info)
    checked = onnx_graph.check_graph(raw)
    assert len(checked.graph.value_info) > raw_value_info
    assert len(checked.graph.value_info) >= len(checked.graph.node) // 2  # most intermediate tensors typed
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in checked.graph.value_info
               if v.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL))
    assert len(checked.graph.node) == len(raw.graph.node)


def test_check_graph_rejects_node_with_missing_input(static_copy):
    node = next(n for n in static_copy.graph.node if n.op_type == "Conv")
    node.input[0] = "no_such_tensor"
    with pytest.raises(RuntimeError, match="onnx.checker") as info:
        onnx_graph.check_graph(static_copy)
    assert "no_such_tensor" in str(info.value)


def test_check_graph_rejects_unknown_operator(static_copy):
    node = next(n for n in static_copy.graph.node if n.op_type == "Softmax")
    node.op_type = "NoSuchOperator"
    with pytest.raises(RuntimeError, match="onnx.checker") as info:
        onnx_graph.check_graph(static_copy)
    assert "NoSuchOperator" in str(info.value)


def test_check_graph_rejects_wrong_tensor_type(static_copy):
    static_copy.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64  # Conv takes floats
    with pytest.raises(RuntimeError, match="onnx.checker"):
        onnx_graph.check_graph(static_copy)


def test_op_counts_and_input_dims(static_graph):
    expected = collections.Counter(n.op_type for n in static_graph.graph.node)
    counts = graph_info.op_counts(static_graph)
    assert counts == dict(expected)
    assert sum(counts.values()) == len(static_graph.graph.node)
    assert graph_info.input_dims(static_graph) == [2, 3, 32, 32]


# ----------------------------------------------------------------------------------------- metadata

def test_metadata_round_trip_and_replacement(static_copy, tmp_path):
    model = static_copy
    assert onnx_graph.set_metadata(model, {"xvol.a": "1", "xvol.b": "two"}) is model
    assert graph_info.read_metadata(model) == {"xvol.a": "1", "xvol.b": "two"}

    onnx_graph.set_metadata(model, {"xvol.a": 3, "xvol.c": '{"json": [1, 2]}'})  # replace a, keep b, add c
    assert graph_info.read_metadata(model) == {"xvol.a": "3", "xvol.b": "two", "xvol.c": '{"json": [1, 2]}'}
    assert [p.key for p in model.metadata_props].count("xvol.a") == 1  # replaced, not duplicated
    assert len(model.metadata_props) == 3

    onnx_graph.save_onnx(model, tmp_path / "m.onnx")
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    assert graph_info.read_metadata(loaded) == {"xvol.a": "3", "xvol.b": "two", "xvol.c": '{"json": [1, 2]}'}
    meta = session(tmp_path / "m.onnx").get_modelmeta().custom_metadata_map
    assert meta == {"xvol.a": "3", "xvol.b": "two", "xvol.c": '{"json": [1, 2]}'}


# ------------------------------------------------------------------------------------------- saving

def test_save_onnx_writes_one_file_atomically(static_copy, tmp_path, models):
    path = tmp_path / "model.onnx"
    files = onnx_graph.save_onnx(static_copy, path)
    assert files == [path]
    assert files_in(tmp_path) == ["model.onnx"]  # no temporary or data file
    assert path.stat().st_size > weight_bytes(static_copy)  # the weights are inside
    loaded = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    assert_matches(path, models[0], STATIC_SHAPE, seed=6)


def test_save_onnx_refuses_existing_file_without_force(static_copy, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older artifact")
    with pytest.raises(XvolError) as info:
        onnx_graph.save_onnx(static_copy, path)
    assert "already exists" in str(info.value) and "--force" in str(info.value)
    assert path.read_bytes() == b"an older artifact"
    assert files_in(tmp_path) == ["model.onnx"]

    assert onnx_graph.save_onnx(static_copy, path, force=True) == [path]
    assert onnx.load(str(path)).SerializeToString() == static_copy.SerializeToString()
    assert files_in(tmp_path) == ["model.onnx"]


def test_save_onnx_refuses_missing_folder(static_copy, tmp_path):
    with pytest.raises(XvolError, match="does not exist"):
        onnx_graph.save_onnx(static_copy, tmp_path / "nodir" / "model.onnx")
    assert files_in(tmp_path) == []


@pytest.fixture
def tiny_threshold(monkeypatch):
    """Make the tiny model count as 'large': it then goes the external-data path of a >2 GB model."""
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 4096)


def test_save_onnx_external_data(static_copy, tmp_path, models, tiny_threshold):
    assert static_copy.ByteSize() > onnx_graph.EXTERNAL_DATA_THRESHOLD
    path = tmp_path / "model.onnx"
    files = onnx_graph.save_onnx(static_copy, path)
    data = tmp_path / "model.onnx.data"
    assert files == [path, data]
    assert files_in(tmp_path) == ["model.onnx", "model.onnx.data"]  # no staging folder left behind
    assert data.stat().st_size > path.stat().st_size  # the weights are beside the graph
    header = onnx.load(str(path), load_external_data=False)
    external = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external
    for tensor in external:  # relative to the .onnx file, so the pair can be moved together
        assert {e.key: e.value for e in tensor.external_data}["location"] == "model.onnx.data"
    assert_matches(path, models[0], STATIC_SHAPE, seed=7)  # ONNX Runtime reads the pair from the path

    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        os.replace(tmp_path / name, moved / name)
    assert_matches(moved / "model.onnx", models[0], STATIC_SHAPE, seed=8)


def test_save_onnx_external_data_refuses_existing_data_file(static_copy, tmp_path, tiny_threshold):
    (tmp_path / "model.onnx.data").write_bytes(b"older weights")
    with pytest.raises(XvolError, match="already exists"):
        onnx_graph.save_onnx(static_copy, tmp_path / "model.onnx")
    assert files_in(tmp_path) == ["model.onnx.data"]
    assert (tmp_path / "model.onnx.data").read_bytes() == b"older weights"

    files = onnx_graph.save_onnx(static_copy, tmp_path / "model.onnx", force=True)
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    assert files_in(tmp_path) == ["model.onnx", "model.onnx.data"]


def test_check_graph_of_large_model_goes_through_a_file(static_copy, models, tiny_threshold):
    expected_weights = weight_bytes(static_copy)
    checked = onnx_graph.check_graph(static_copy)
    assert weight_bytes(checked) == expected_weights  # returned with its weights loaded back
    assert len(checked.graph.value_info) > 0  # shape-inferred
    assert_matches(checked, models[0], STATIC_SHAPE, seed=9)


def test_save_onnx_external_data_leaves_the_model_in_memory_intact(static_copy, tmp_path, models, tiny_threshold):
    expected_weights = weight_bytes(static_copy)
    onnx_graph.save_onnx(static_copy, tmp_path / "model.onnx")
    assert weight_bytes(static_copy) == expected_weights
    assert_matches(static_copy, models[0], STATIC_SHAPE, seed=10)


def test_check_graph_of_large_model_leaves_its_argument_intact(static_copy, tiny_threshold):
    expected_weights = weight_bytes(static_copy)
    onnx_graph.check_graph(static_copy)
    assert weight_bytes(static_copy) == expected_weights
