"""The TensorRT half's plain logic, on any machine: profiles, the precision plan, sidecars, the cache key and the
layer precision check. What needs TensorRT and a GPU lives in test_tensorrt_gpu.py."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xvol_export.errors import XvolError
from xvol_export.tensorrt.build import EngineSettings, graph_inputs
from xvol_export.tensorrt.cache import cached_engine_path, engine_cache_dir, engine_cache_key
from xvol_export.tensorrt.environment import TensorRTEnvironment
from xvol_export.tensorrt.layers import check_layer_precisions, tensor_precision
from xvol_export.tensorrt.plan import precision_plan
from xvol_export.tensorrt.profiles import (
    InputRange,
    ShapeProfile,
    check_range,
    check_shape_options,
    default_profiles,
    parse_profiles,
    profile_index_for,
)
from xvol_export.tensorrt.sidecar import EngineSidecar, check_sidecar, read_sidecar, sidecar_path

ONE_INPUT = {"input": (None, 3, 28, 28)}
DYNAMIC = {"input": (None, 3, None, None)}


# ------------------------------------------------------------------------------------------- profiles

def test_profiles_one_per_repetition_unnamed_for_a_single_input():
    profiles = parse_profiles(ONE_INPUT, ["1x3x28x28", "8x3x28x28"], [], ["4x3x28x28", "input:32x3x28x28"])
    assert [p.range_of("input") for p in profiles] == [
        InputRange("input", (1, 3, 28, 28), (4, 3, 28, 28), (4, 3, 28, 28)),  # no --opt-shapes: opt = max
        InputRange("input", (8, 3, 28, 28), (32, 3, 28, 28), (32, 3, 28, 28)),
    ]


def test_several_inputs_of_one_profile_and_a_static_input_filled_in():
    inputs = {"image": (None, 3, 28, 28), "scale": (1, 4)}
    [profile] = parse_profiles(inputs, ["image:1x3x28x28"], ["image:2x3x28x28"], ["image:[4,3,28,28]"])
    assert profile.range_of("scale") == InputRange("scale", (1, 4), (1, 4), (1, 4))
    with pytest.raises(XvolError, match="name each"):
        parse_profiles(inputs, ["1x3x28x28"], [], ["4x3x28x28"])


@pytest.mark.parametrize(("mins", "opts", "maxs", "message"), [
    (["8x3x28x28"], [], ["1x3x28x28"], r"dimension 0 must satisfy min <= opt <= max, but it is 8, 1, 1"),
    (["1x3x28x28"], ["9x3x28x28"], ["8x3x28x28"], "dimension 0 must satisfy"),
    (["1x3x28x28"], [], ["4x3x32x32"], "dimension 2, which the graph fixes at 28"),
    (["1x3x28"], [], ["4x3x28"], "has 3 dimensions; the graph's input has 4"),
    (["mask:1x3x28x28"], [], ["mask:4x3x28x28"], "no input 'mask'"),
    (["1x3x28x28", "2x3x28x28"], [], ["4x3x28x28"], "once per profile"),
    (["1x3x28x28;input:1x3x28x28"], [], ["4x3x28x28"], "given twice"),
    (["1x3xAx28"], [], ["4x3x28x28"], "Cannot read the shape"),
])
def test_bad_profiles_are_refused_naming_the_rule(mins, opts, maxs, message):
    with pytest.raises(XvolError, match=message):
        parse_profiles(ONE_INPUT, mins, opts, maxs)


def test_min_above_max_is_refused_before_any_graph_exists():
    with pytest.raises(XvolError, match="min <= opt <= max"):
        EngineSettings(min_shapes=("8x3x28x28",), max_shapes=("1x3x28x28",)).check()
    EngineSettings(min_shapes=("1x3x28x28",), max_shapes=("8x3x28x28",)).check()


@pytest.mark.parametrize(("settings", "message"), [
    (EngineSettings(workspace_gib=0), "--workspace"), (EngineSettings(workspace_gib=float("nan")), "--workspace"),
    (EngineSettings(opt_level=6), "--opt-level"), (EngineSettings(hardware_compat="turing+"), "--hardware-compat"),
    (EngineSettings(batch=0), "--batch"),
])
def test_build_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(XvolError, match=message):
        settings.check()


@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 64), st.integers(0, 64)), min_size=1, max_size=5),
       st.lists(st.integers(1, 200), min_size=1, max_size=5))
def test_a_range_contains_exactly_the_shapes_within_its_bounds(bounds, probe):
    low = tuple(b[0] for b in bounds)
    mid = tuple(b[0] + b[1] for b in bounds)
    high = tuple(b[0] + b[1] + b[2] for b in bounds)
    shape_range = check_range(InputRange("x", low, mid, high), (None,) * len(bounds))
    shape = tuple(probe[i % len(probe)] for i in range(len(bounds)))
    assert shape_range.contains(shape) == all(lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True))
    assert shape_range.contains(low) and shape_range.contains(high) and not shape_range.contains(shape + (1,))


def test_default_profiles_follow_batch_and_imgsz():
    assert default_profiles({"input": (2, 3, 28, 28)}, batch=8, imgsz=None)[0].range_of("input") == \
        InputRange("input", (2, 3, 28, 28), (2, 3, 28, 28), (2, 3, 28, 28))  # a static graph keeps its shape
    assert default_profiles(DYNAMIC, batch=8, imgsz=(32, 48))[0].range_of("input") == \
        InputRange("input", (1, 3, 32, 48), (8, 3, 32, 48), (8, 3, 32, 48))
    with pytest.raises(XvolError, match="dynamic dimension 2"):
        default_profiles(DYNAMIC, batch=1, imgsz=None)


def test_inputs_are_matched_to_the_first_profile_that_takes_them():
    profiles = parse_profiles(ONE_INPUT, ["1x3x28x28", "8x3x28x28"], [], ["4x3x28x28", "32x3x28x28"])
    assert profile_index_for(profiles, {"input": (4, 3, 28, 28)}, "m.engine") == 0
    assert profile_index_for(profiles, {"input": (16, 3, 28, 28)}, "m.engine") == 1
    with pytest.raises(XvolError) as err:
        profile_index_for(profiles, {"input": (64, 3, 28, 28)}, "m.engine")
    assert "input 64x3x28x28" in str(err.value)
    assert "profile 2: input: min 8x3x28x28, opt 32x3x28x28, max 32x3x28x28" in str(err.value)


def test_graph_inputs_skip_initializers_and_mark_dynamic_dims():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [1.0, 2.0, 3.0])])
    assert graph_inputs(helper.make_model(graph)) == {"x": (None, 3)}
    assert onnx.checker.check_model(helper.make_model(graph)) is None


# --------------------------------------------------------------------------------------- precision plan

@pytest.mark.parametrize("version", ["10.13.0.35", "11.0.0"])
@pytest.mark.parametrize(("graph", "float_layers"), [("fp32", ("fp32",)), ("fp16", ("fp16",)), ("int8", ("fp32",))])
def test_the_graph_sets_the_precision_through_a_strongly_typed_network(version, graph, float_layers):
    plan = precision_plan(graph, version)
    assert plan.strongly_typed and plan.flags == () and plan.float_layers == float_layers
    assert precision_plan(graph, version, tf32=True).flags == ("TF32",)


def test_fp16_autotuning_of_an_fp32_graph_is_a_tensorrt_10_builder_flag():
    plan = precision_plan("fp32", "10.13.0.35", fp16_tactics=True)
    assert not plan.strongly_typed and plan.flags == ("FP16",) and plan.float_layers == ("fp32", "fp16")
    assert "weakly typed" in plan.describe()
    with pytest.raises(XvolError, match="TensorRT 11 removed the FP16 builder flag"):
        precision_plan("fp32", "11.1.0", fp16_tactics=True)
    with pytest.raises(XvolError, match="applies to fp32 graphs; this graph is int8"):
        precision_plan("int8", "10.13.0", fp16_tactics=True)


@pytest.mark.parametrize(("graph", "version", "message"), [
    ("fp32", "8.6.1", "too old"), ("fp32", "ten", "Cannot read the TensorRT version"), ("bf16", "10.0", "Unknown"),
])
def test_impossible_precision_requests_are_refused(graph, version, message):
    with pytest.raises(XvolError, match=message):
        precision_plan(graph, version)


# ------------------------------------------------------------------------------------ layer precisions

def _layer(name: str, datatype: str) -> dict:
    return {"Name": name, "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x", "Format/Datatype": f"Row major linear {datatype} format"}],
            "Outputs": [{"Name": "y", "Format/Datatype": f"Row major linear {datatype} format"}]}


def test_tensor_formats_name_their_precision():
    assert tensor_precision("Channel major FP16 format where channel % 8 == 0") == "fp16"
    assert tensor_precision("Thirty-two wide channel vectorized row major Int8 format") == "int8"
    assert tensor_precision("Row major linear FP32") == "fp32"
    assert tensor_precision("Row major linear BF16 format") == "bf16"
    assert tensor_precision("unknown") is None


def test_every_fused_compute_node_is_checked_and_a_silent_fp32_layer_fails():
    expected = {"/conv1/Conv": "fp16", "/conv2/Conv": "fp16", "/fc/Gemm": "fp16"}
    plan = precision_plan("fp16", "10.13.0")
    good = {"Layers": [_layer("/conv1/Conv + /relu/Relu", "FP16"), _layer("/conv2/Conv", "FP16"),
                       _layer("Reformatting CopyNode for Input Tensor 0 to /fc/Gemm", "FP32"),
                       _layer("/fc/Gemm", "FP16")]}
    check = check_layer_precisions(good, expected, plan)
    assert check.passed and check.checked == 3  # a reformatting copy names /fc/Gemm, but does not compute it
    bad = {"Layers": [_layer("/conv1/Conv + /relu/Relu", "FP16"), _layer("/conv2/Conv", "FP32"),
                      _layer("/fc/Gemm", "FP16")]}
    check = check_layer_precisions(bad, expected, plan)
    assert not check.passed and check.mismatches == ("/conv2/Conv runs in fp32 (layer '/conv2/Conv'), asked fp16",)
    assert "1 of 3 compute layers run at another precision" in check.failure()


def test_int8_nodes_must_run_in_int8_and_float_nodes_as_the_plan_allows():
    expected = {"/conv1/Conv": "int8", "/head/Conv": "fp32"}
    layers = {"Layers": [_layer("/conv1/Conv", "Int8"), _layer("/head/Conv", "FP32")]}
    assert check_layer_precisions(layers, expected, precision_plan("int8", "10.13")).passed
    layers = {"Layers": [_layer("/conv1/Conv", "FP32"), _layer("/head/Conv", "FP32")]}
    check = check_layer_precisions(layers, expected, precision_plan("int8", "10.13"))
    assert check.mismatches == ("/conv1/Conv runs in fp32 (layer '/conv1/Conv'), asked int8",)


def test_layer_information_that_cannot_be_read_is_not_a_pass():
    expected = {"/conv1/Conv": "fp32"}
    names_only = check_layer_precisions({"Layers": ["/conv1/Conv"]}, expected, precision_plan("fp32", "10.13"))
    assert not names_only.passed and "detailed profiling verbosity" in names_only.failure()
    nothing = check_layer_precisions({"Layers": [_layer("other", "FP32")]}, expected, precision_plan("fp32", "10.13"))
    assert not nothing.passed and "none of the graph's 1 compute nodes" in nothing.failure()


# --------------------------------------------------------------------------------------------- sidecar

BUILT = TensorRTEnvironment("10.13.0.35", "NVIDIA H200", "9.0")


def _sidecar(**settings) -> EngineSidecar:
    profiles = tuple(default_profiles(ONE_INPUT, 8, None))
    return EngineSidecar(BUILT.tensorrt, BUILT.gpu_name, BUILT.compute_capability, "fp16",
                         precision_plan("fp16", BUILT.tensorrt).to_dict(), profiles, "model.onnx", "ab" * 32,
                         {"hardware_compat": "none", "version_compatible": False, **settings}, "0.1")


def test_a_sidecar_round_trips_through_its_file(tmp_path):
    engine = tmp_path / "model.engine"
    assert read_sidecar(engine) is None
    sidecar_path(engine).write_text(json.dumps(_sidecar().to_dict()))
    assert read_sidecar(engine) == _sidecar()
    assert sidecar_path(engine).name == "model.engine.json"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "cannot read the engine sidecar"), ("[1, 2]", "not a JSON object"),
    ('{"format": "other"}', "is not an xvol engine sidecar"),
    ('{"format": "xvol.tensorrt-engine", "format_version": 99}', "format version 99"),
    ('{"format": "xvol.tensorrt-engine", "format_version": 1, "tensorrt": "10"}', "incomplete or damaged"),
])
def test_a_damaged_sidecar_is_refused_naming_it(tmp_path, content, message):
    engine = tmp_path / "model.engine"
    sidecar_path(engine).write_text(content)
    with pytest.raises(XvolError, match=message) as err:
        read_sidecar(engine)
    assert "model.engine.json" in str(err.value)


def test_the_machine_that_built_an_engine_runs_it_without_a_word():
    assert check_sidecar(_sidecar(), BUILT, "m.engine") == []


def test_no_sidecar_is_a_warning_not_a_refusal():
    [warning] = check_sidecar(None, BUILT, "m.engine")
    assert "no sidecar (m.engine.json)" in warning


@pytest.mark.parametrize(("running", "settings", "message"), [
    (TensorRTEnvironment("10.12.0.36", "NVIDIA H200", "9.0"), {}, "built with TensorRT 10.13.0.35, but this machine"),
    (TensorRTEnvironment("10.13.1", "NVIDIA H200", "9.0"), {}, "built with TensorRT"),
    (TensorRTEnvironment("10.13.0.35", "NVIDIA A100", "8.0"), {}, r"compute capability 9.0 \(NVIDIA H200\), but"),
    (TensorRTEnvironment("10.13.0.35", "Tesla T4", "7.5"), {"hardware_compat": "ampere+"}, "Ampere or newer"),
    (TensorRTEnvironment("10.12.0", "NVIDIA H200", "9.0"), {"version_compatible": True}, "version-compatible"),
    (TensorRTEnvironment("11.0.0", "NVIDIA H200", "9.0"), {"version_compatible": True}, "version-compatible"),
    (TensorRTEnvironment("10.13.0.35", "NVIDIA L4", "8.9"), {"hardware_compat": "same-cc"}, "compute capability 9.0"),
])
def test_an_engine_built_elsewhere_is_refused_before_tensorrt_reads_it(running, settings, message):
    with pytest.raises(XvolError, match=message) as err:
        check_sidecar(_sidecar(**settings), running, "m.engine")
    assert "m.engine" in str(err.value) and "Rebuild" in str(err.value) or "rebuild" in str(err.value)


@pytest.mark.parametrize(("running", "settings"), [
    (TensorRTEnvironment("10.14.2", "NVIDIA H200", "9.0"), {"version_compatible": True}),
    (TensorRTEnvironment("10.13.0.35", "NVIDIA A10", "8.6"), {"hardware_compat": "ampere+"}),
    (TensorRTEnvironment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"), {"hardware_compat": "same-cc"}),
])
def test_compatible_engines_run_where_their_compatibility_allows(running, settings):
    assert check_sidecar(_sidecar(**settings), running, "m.engine") == []


def test_the_same_compute_capability_on_another_gpu_model_runs_with_a_warning():
    [warning] = check_sidecar(_sidecar(), TensorRTEnvironment("10.13.0.35", "NVIDIA H100", "9.0"), "m.engine")
    assert "built on a NVIDIA H200 and running on a NVIDIA H100" in warning


# ------------------------------------------------------------------------------------------ engine cache

def test_the_cache_key_changes_with_everything_the_engine_depends_on():
    profiles = default_profiles(ONE_INPUT, 8, None)
    settings = EngineSettings().to_dict()
    key = engine_cache_key("a" * 64, settings, profiles, BUILT)
    assert key == engine_cache_key("a" * 64, dict(settings), list(profiles), BUILT)
    assert key != engine_cache_key("b" * 64, settings, profiles, BUILT)
    assert key != engine_cache_key("a" * 64, EngineSettings(opt_level=5).to_dict(), profiles, BUILT)
    assert key != engine_cache_key("a" * 64, settings, default_profiles(ONE_INPUT, 16, None), BUILT)
    assert key != engine_cache_key("a" * 64, settings, profiles, TensorRTEnvironment("10.14", "NVIDIA H200", "9.0"))
    assert key != engine_cache_key("a" * 64, settings, profiles, TensorRTEnvironment("10.13.0.35", "NVIDIA L4", "8.9"))
    # the timing cache speeds a build up but does not change what is built
    assert EngineSettings(timing_cache="a.cache").to_dict() == settings


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XVOL_CACHE_DIR", str(tmp_path / "c"))
    assert engine_cache_dir() == tmp_path / "c"
    expected = tmp_path / "c" / "model-0123456789abcdef.engine"
    assert cached_engine_path("dir/model.onnx", "0123456789abcdef0123") == expected
    monkeypatch.delenv("XVOL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert engine_cache_dir() == tmp_path / "x" / "xvol" / "engines"


def test_profiles_serialize_as_the_sidecar_stores_them():
    profile = default_profiles(ONE_INPUT, 4, None)[0]
    assert ShapeProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    check_shape_options(["1x3x28x28"], ["2x3x28x28"], ["4x3x28x28"])


def test_an_engine_is_saved_after_its_sidecar_and_layer_information(tmp_path):
    from xvol_export.tensorrt.build import BuiltEngine, save_engine
    from xvol_export.tensorrt.layers import LayerPrecisionCheck
    from xvol_export.tensorrt.sidecar import layers_path

    built = BuiltEngine(b"plan bytes", _sidecar(), {"Layers": [_layer("/conv1/Conv", "FP16")]},
                        LayerPrecisionCheck(1, 1, ()), precision_plan("fp16", BUILT.tensorrt), 1.5)
    engine = tmp_path / "model.engine"
    written = save_engine(built, engine)
    assert written == [engine, sidecar_path(engine), layers_path(engine)]
    assert engine.read_bytes() == b"plan bytes" and read_sidecar(engine) == _sidecar()
    assert json.loads(layers_path(engine).read_text()) == built.layer_info
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary file left
    with pytest.raises(XvolError, match="already exists"):
        save_engine(built, engine)


def test_what_is_missing_for_engines_is_named_with_what_to_install(monkeypatch):
    import torch

    from xvol_export.tensorrt.environment import INSTALL, cuda_missing, engine_build_missing, polygraphy_missing

    if not torch.cuda.is_available():
        assert "no CUDA GPU" in cuda_missing() and "CUDA build" in cuda_missing()
    monkeypatch.setitem(sys.modules, "polygraphy", None)  # import polygraphy now raises ImportError
    assert polygraphy_missing().startswith("Polygraphy is not installed") and "pip install polygraphy" in \
        polygraphy_missing()
    reason = engine_build_missing()
    assert reason is not None and (INSTALL in reason or "Polygraphy" in reason)
