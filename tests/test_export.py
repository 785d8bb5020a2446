"""The export job (`export_checkpoint`) on saved checkpoints, both forms: verified graphs, fold structure,
layouts, dynamic shapes, metadata, the digits sample, and nothing written when a check fails."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import xvol_export
from xvol_export import graph_info, jobs
from xvol_export.checkpoint import load_checkpoint, load_model, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.fold.families.xvolution import ONNX_CONVS_MAX_BATCH
from xvol_export.inputs import InputShape
from xvol_export.jobs import ExportSettings, FoldSettings, VerifySettings

from helpers import randomize_bn, rel_l2

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_xvol_resnet_tiny.pth"
HOLDOUT = ROOT / "samples" / "digits_holdout.npz"
TOL = 1e-5


# ------------------------------------------------------------------------------------------ helpers

def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))  # hidden temporaries included


def run_file(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an ONNX file in ONNX Runtime; a graph with a fixed batch gets one item at a time."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    batch = sess.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(x)
    return np.concatenate([sess.run(["output"], {"input": x[i : i + step]})[0] for i in range(0, len(x), step)])


def assert_file_matches(path: Path, model: nn.Module, shape, seed: int) -> float:
    """The ONNX file against the eval-mode PyTorch model on seeded random inputs of ``shape``."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    got = run_file(path, x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))
    assert got.shape == tuple(expected.shape)
    err = rel_l2(torch.from_numpy(got), expected)
    assert err < TOL, (path.name, shape, err)
    return err


def expected_conv_count(training: nn.Module, layouts: dict[str, str], shift_convs: bool = True) -> int:
    """Conv nodes the fold plan implies: every plain conv stays one conv (its BatchNorm folded in); each
    X-volution block's five convs become one static conv (dense) or two (split), plus the qkv projection
    and, with ``shift_convs`` (a graph exported at batch 1 or 2), the two one-hot convs that take the
    aggregate's shifts of k and v."""
    count = sum(isinstance(m, nn.Conv2d) for m in training.modules())
    blocks = {n: m for n, m in training.named_modules() if isinstance(m, xvol_export.XVolution)}
    assert set(blocks) == set(layouts)
    for name, block in blocks.items():
        count -= sum(isinstance(m, nn.Conv2d) for m in block.modules())
        static = 2 if layouts[name] == "split" and block.dilated_branch else 1
        count += static + ((3 if shift_convs else 1) if block.attention else 0)
    return count


def graph_of(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def metadata_of(path: Path) -> dict[str, str]:
    return graph_info.read_metadata(onnx.load(str(path), load_external_data=False))


@dataclass
class Case:
    name: str
    folder: Path
    model: nn.Module  # eval-mode training form
    channels: int
    imgsz: tuple[int, int]
    train: Path
    deploy: Path
    train_result: jobs.ExportResult
    deploy_result: jobs.ExportResult

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.channels, *self.imgsz)

    def blocks(self) -> int:
        return sum(isinstance(m, xvol_export.XVolution) for m in self.model.modules())


def make_case(folder: Path, name: str, arch: str, config: dict, imgsz: tuple[int, int] | None, seed: int,
              layout: str = "auto") -> Case:
    """Save a training checkpoint (random BN statistics), fold it with ``jobs.fold_checkpoint``, export both."""
    torch.manual_seed(seed)
    model = xvol_export.create_model(arch, **config)
    assert randomize_bn(model, torch.Generator().manual_seed(seed + 100)) > 0
    model.eval()
    channels, *default_hw = model.input_size
    hw = tuple(imgsz or default_hw)
    save_checkpoint(model, folder / "train.pth")
    folded = jobs.fold_checkpoint(folder / "train.pth", folder / "deploy.pth",
        FoldSettings(seed=0, input_shape=InputShape((2, channels, *hw))))
    assert folded.written
    train_result = jobs.export_checkpoint(folder / "train.pth", folder / "train.onnx",
        ExportSettings(imgsz=imgsz, seed=1, layout=layout))
    deploy_result = jobs.export_checkpoint(folder / "deploy.pth", folder / "deploy.onnx",
        ExportSettings(imgsz=imgsz, seed=1))
    return Case(name, folder, model, channels, hw, folder / "train.pth", folder / "deploy.pth", train_result,
                deploy_result)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Case:
    """xvol_resnet_tiny with X-volution in stages 2 and 3 (two blocks), one block per stage."""
    return make_case(tmp_path_factory.mktemp("tiny"), "tiny", "xvol_resnet_tiny",
                     {"stages": [2, 3], "blocks_per_stage": 1}, None, seed=0)


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A fresh folder holding only a copy of the tiny training checkpoint."""
    (tmp_path / "train.pth").write_bytes(tiny.train.read_bytes())
    return tmp_path / "train.pth"


def check_export(case: Case, form: str) -> None:
    """The export passed, was written, and the file computes what the training form computes."""
    result = case.train_result if form == "train" else case.deploy_result
    output = case.folder / f"{form}.onnx"
    assert result.passed, (form, result.failure_summary())
    assert result.written and result.files == [str(output)] and output.is_file()
    assert not result.failures
    assert result.format == "onnx" and result.precision == "fp32"
    assert result.input_shape == case.shape
    assert result.simplifier == "onnxslim"
    assert result.verification.passed
    assert result.verification.output.rel_l2 < TOL
    assert result.verification.output.shape == (2, 10)
    if form == "train":
        assert result.verification.reference == "training form"
        assert result.fold is not None and result.fold_verification.passed
        assert len(result.fold.blocks) == case.blocks() == 2
    else:
        assert result.fold is None and result.fold_verification is None
        assert any("deploy checkpoint" in note for note in result.notes)
    json.dumps(result.to_dict())  # the report is JSON-ready
    # independently of the job's own report: the written file against the training-form model
    assert_file_matches(output, case.model, (2, case.channels, *case.imgsz), seed=10)
    assert_file_matches(output, case.model, (3, case.channels, *case.imgsz), seed=11)


def check_structure(case: Case, form: str) -> None:
    """No BatchNormalization; as many Conv nodes as the deploy model has nn.Conv2d, and as the plan implies."""
    result = case.train_result if form == "train" else case.deploy_result
    graph = graph_of(case.folder / f"{form}.onnx")
    ops = graph_info.op_counts(graph)
    assert "BatchNormalization" not in ops
    if form == "deploy":
        deploy, ckpt = load_model(case.deploy)
        layouts = ckpt.layouts
    else:
        deploy, _ = xvol_export.fold(case.model, layout=result.fold.layout, input_shape=case.shape)
        layouts = result.fold.layouts
    attention_blocks = sum(isinstance(m, xvol_export.XVolutionDeploy) and m.attention for m in deploy.modules())
    assert ops["Conv"] == sum(isinstance(m, nn.Conv2d) for m in deploy.modules()) + 2 * attention_blocks, form
    assert ops["Conv"] == expected_conv_count(case.model, layouts), form
    assert result.graph["conv_nodes"] == ops["Conv"] == result.graph["conv_modules"]
    assert result.graph["batchnorm_nodes"] == 0
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)  # standard operators only


def layout_conv_counts(case: Case, folder: Path, layouts=("dense", "split")) -> dict[str, int]:
    """Export the training checkpoint with every block in one layout; the Conv count of each graph."""
    convs = {}
    for layout in layouts:
        output = folder / f"{layout}.onnx"
        result = jobs.export_checkpoint(case.train, output, ExportSettings(layout=layout, imgsz=case.imgsz, seed=2))
        assert result.passed, result.failure_summary()
        assert set(result.fold.layouts.values()) == {layout}
        assert result.verification.output.rel_l2 < TOL
        ops = graph_info.op_counts(graph_of(output))
        assert "BatchNormalization" not in ops
        assert ops["Conv"] == expected_conv_count(case.model, result.fold.layouts)
        assert json.loads(metadata_of(output)["xvol.fold_layout"]) == result.fold.layouts
        convs[layout] = ops["Conv"]
    return convs


# ---------------------------------------------------------------------------------- both forms

@pytest.mark.parametrize("form", ["train", "deploy"])
def test_tiny_export_passes_and_matches_the_training_form(tiny, form):
    check_export(tiny, form)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_tiny_folded_graph_has_no_batchnorm_and_the_planned_convs(tiny, form):
    check_structure(tiny, form)


def test_tiny_layouts_dense_and_split_differ_by_one_conv_per_block(tiny, tmp_path):
    convs = layout_conv_counts(tiny, tmp_path)
    assert convs["split"] - convs["dense"] == tiny.blocks() == 2


def test_resnet18_sized_model_both_forms_and_layouts(tmp_path_factory):
    """xvol_resnet18 (10 classes; X-volution in stage 3: two blocks) at 64x64, all in one test so that the
    55 MB model is built and exported once, whichever xdist worker runs it. The training checkpoint is
    exported with the split layout, so one more export (dense) gives both layouts."""
    folder = tmp_path_factory.mktemp("r18")
    case = make_case(folder, "r18", "xvol_resnet18", {"num_classes": 10}, (64, 64), seed=1, layout="split")
    for form in ("train", "deploy"):
        check_export(case, form)
        check_structure(case, form)
    assert set(case.train_result.fold.layouts.values()) == {"split"}
    convs = layout_conv_counts(case, folder, layouts=("dense",))
    assert case.train_result.graph["conv_nodes"] - convs["dense"] == case.blocks() == 2


# -------------------------------------------------------------------------------------- dynamic

def test_dynamic_export_runs_at_other_batch_and_image_sizes(tiny, tmp_path):
    output = tmp_path / "dynamic.onnx"
    result = jobs.export_checkpoint(tiny.train, output, ExportSettings(dynamic=True, seed=3))
    assert result.passed, result.failure_summary()
    assert result.dynamic and result.simplifier == "onnxslim"
    assert result.dynamic_check is not None and result.dynamic_check.passed
    assert result.dynamic_check.output.rel_l2 < TOL
    checked, verified = result.dynamic_check.input_shape, result.verification.input_shape
    assert checked[0] != verified[0] and checked[2:] != verified[2:]  # another batch and another image size
    assert result.graph["input_dims"] == ["batch", 3, "height", "width"]
    assert graph_info.input_dims(graph_of(output)) == ["batch", 3, "height", "width"]
    assert json.loads(metadata_of(output)["xvol.dynamic"]) is True
    # A dynamic batch may be large: the aggregate keeps its slices (no one-hot shift convs).
    assert result.deploy_options == {"dilated_conv": "direct", "aggregate": "slices"}
    assert json.loads(metadata_of(output)["xvol.deploy_options"]) == result.deploy_options
    assert result.graph["conv_nodes"] == expected_conv_count(tiny.model, result.fold.layouts, shift_convs=False)
    for seed, shape in enumerate([(1, 3, 32, 32), (4, 3, 32, 32), (2, 3, 48, 40), (3, 3, 21, 27)]):
        assert_file_matches(output, tiny.model, shape, seed=seed)


@pytest.mark.parametrize("batch,aggregate", [(2, "convs"), (3, "slices")])
def test_export_batch_decides_the_aggregate_form(tiny, tmp_path, batch, aggregate):
    """One-hot shift convs up to batch ONNX_CONVS_MAX_BATCH, slices beyond: the graph and its metadata say which."""
    assert ONNX_CONVS_MAX_BATCH == 2
    output = tmp_path / "model.onnx"
    result = jobs.export_checkpoint(tiny.train, output, ExportSettings(batch=batch, seed=4))
    assert result.passed, result.failure_summary()
    assert result.deploy_options["aggregate"] == aggregate
    assert json.loads(metadata_of(output)["xvol.deploy_options"]) == result.deploy_options
    expected = expected_conv_count(tiny.model, result.fold.layouts, shift_convs=aggregate == "convs")
    assert graph_info.op_counts(graph_of(output))["Conv"] == expected == result.graph["conv_nodes"]
    assert result.verification.output.rel_l2 < TOL


def test_static_export_is_checked_at_one_shape_only(tiny):
    result = tiny.train_result
    assert result.dynamic is False and result.dynamic_check is None
    assert result.graph["input_dims"] == [1, 3, 32, 32]


# ------------------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("form", ["train", "deploy"])
def test_metadata_props(tiny, form):
    result = tiny.train_result if form == "train" else tiny.deploy_result
    source = tiny.train if form == "train" else tiny.deploy
    meta = metadata_of(tiny.folder / f"{form}.onnx")
    assert meta == result.metadata
    assert meta["xvol.version"] == xvol_export.__version__
    assert meta["xvol.source_sha256"] == sha256(source) == result.source_sha256
    assert meta["xvol.architecture"] == "xvol_resnet_tiny"
    assert json.loads(meta["xvol.config"]) == load_checkpoint(tiny.train).config
    layouts = json.loads(meta["xvol.fold_layout"])
    assert layouts == (result.fold.layouts if form == "train" else load_checkpoint(tiny.deploy).layouts)
    assert set(layouts) == {"layer2.0.conv1", "layer3.0.conv1"}
    assert meta["xvol.precision"] == "fp32"
    assert meta["xvol.exporter"] == "torchscript (opset 17)"
    assert meta["xvol.simplifier"] == "onnxslim"
    assert meta["xvol.input_shape"] == "1x3x32x32"
    assert json.loads(meta["xvol.deploy_options"]) == {"dilated_conv": "direct", "aggregate": "convs"}
    verified = json.loads(meta["xvol.verified"])
    assert verified["rel_l2"] == result.verification.output.rel_l2 < TOL
    assert verified["max_abs"] == result.verification.output.max_abs
    assert verified["reference"] == ("training form" if form == "train" else "deploy form") + " in float64"
    assert verified["judged_by"] == "default fp32 gate" and verified["baseline_rel_l2"] > 0
    assert "seed 1" in verified["inputs"]


# ------------------------------------------------------------------------------- the real sample

def test_digits_sample_keeps_every_prediction(tmp_path):
    output = tmp_path / "digits.onnx"
    result = jobs.export_checkpoint(SAMPLE, output, ExportSettings(data=HOLDOUT))
    assert result.passed, result.failure_summary()
    assert result.input_shape == (1, 1, 32, 32)
    out = result.verification.output
    assert out.top1_agreement == 1.0
    assert out.rel_l2 < TOL
    accuracy = result.verification.accuracy
    assert accuracy["count"] == 360
    assert accuracy["candidate"] == accuracy["reference"] == pytest.approx(357 / 360)  # 0.9917
    expected = load_checkpoint(SAMPLE).metadata["holdout_accuracy"]
    assert accuracy["reference"] == pytest.approx(expected, abs=1e-9)
    assert result.fold_verification.accuracy["reference"] == result.fold_verification.accuracy["candidate"]
    verified = json.loads(metadata_of(output)["xvol.verified"])
    assert verified["top1_agreement"] == 1.0 and verified["accuracy"] == accuracy
    assert verified["inputs"] == str(HOLDOUT)
    assert metadata_of(output)["xvol.source_sha256"] == sha256(SAMPLE)


# ------------------------------------------------------------------------------- failing checks

def test_failing_verification_writes_nothing(tiny_copy):
    folder = tiny_copy.parent
    result = jobs.export_checkpoint(tiny_copy, folder / "out.onnx", ExportSettings(tolerance=Tolerance(0, 0), seed=4))
    assert result.passed is False
    assert result.written is False and result.files == [] and result.metadata == {}
    assert listing(folder) == ["train.pth"]  # no output, no temporary file
    assert result.fold_verification.passed  # the fold passed (its own fp32 tolerance); the ONNX check did not
    assert result.verification is not None and not result.verification.passed
    assert result.verification.output.max_abs > 0
    assert "ONNX" in result.failure_summary() and "needs" in result.failure_summary()
    assert any("trying the unsimplified graph" in n for n in result.notes)  # both graphs were tried
    assert any("nothing written" in n for n in result.notes)
    assert result.to_dict()["passed"] is False


def test_simplifier_crash_falls_back_to_the_unsimplified_graph(tiny_copy, monkeypatch):
    def crash(model, simplifier="onnxslim"):
        raise RuntimeError("simulated simplifier crash")

    monkeypatch.setattr(onnx_graph, "simplify", crash)
    output = tiny_copy.parent / "out.onnx"
    result = jobs.export_checkpoint(tiny_copy, output, ExportSettings(seed=5))
    assert result.passed, result.failure_summary()
    assert result.written and output.is_file()
    assert result.simplifier is None
    assert any("onnxslim failed" in n and "simulated simplifier crash" in n and "unsimplified" in n
               for n in result.notes), result.notes
    assert metadata_of(output)["xvol.simplifier"] == "none"
    ops = graph_info.op_counts(graph_of(output))
    assert "Constant" in ops  # the exporter's graph, as it was
    assert "BatchNormalization" not in ops
    assert_file_matches(output, load_model(tiny_copy)[0], (2, 3, 32, 32), seed=12)


def test_large_model_path_writes_external_data_beside_the_graph(tiny_copy, tiny, monkeypatch):
    """With the threshold lowered, the tiny model takes the >2 GB path: checked through a file, saved as
    NAME.onnx + NAME.onnx.data, and still verified, tagged and readable by `xvol verify`."""
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 4096)
    folder = tiny_copy.parent
    output = folder / "out.onnx"
    result = jobs.export_checkpoint(tiny_copy, output, ExportSettings(seed=9))
    assert result.passed, result.failure_summary()
    assert result.files == [str(output), str(folder / "out.onnx.data")]
    assert listing(folder) == ["out.onnx", "out.onnx.data", "train.pth"]
    assert (folder / "out.onnx.data").stat().st_size > output.stat().st_size
    assert metadata_of(output)["xvol.source_sha256"] == sha256(tiny_copy)
    assert_file_matches(output, tiny.model, (2, 3, 32, 32), seed=14)
    report = jobs.verify_artifacts(tiny_copy, output, VerifySettings(seed=9))
    assert report.passed and report.output.rel_l2 < TOL


def test_onnxsim_and_no_simplify(tiny_copy, tiny):
    folder = tiny_copy.parent
    sim = jobs.export_checkpoint(tiny_copy, folder / "sim.onnx", ExportSettings(simplifier="onnxsim", seed=6))
    plain = jobs.export_checkpoint(tiny_copy, folder / "plain.onnx", ExportSettings(simplify=False, seed=6))
    assert sim.passed and plain.passed
    assert sim.simplifier == "onnxsim" and metadata_of(folder / "sim.onnx")["xvol.simplifier"] == "onnxsim"
    assert plain.simplifier is None and not any("failed" in n for n in plain.notes)
    assert sim.graph["nodes"] < plain.graph["nodes"]
    assert sim.graph["nodes"] <= tiny.train_result.graph["nodes"] * 1.1
    for name in ("sim.onnx", "plain.onnx"):
        assert_file_matches(folder / name, tiny.model, (2, 3, 32, 32), seed=13)


# ------------------------------------------------------------------------------------ bad input

def test_default_output_path_beside_the_checkpoint(tiny_copy):
    result = jobs.export_checkpoint(tiny_copy, settings=ExportSettings(seed=7))
    assert result.passed
    assert result.output == str(tiny_copy.with_suffix(".onnx"))
    assert listing(tiny_copy.parent) == ["train.onnx", "train.pth"]


@pytest.mark.parametrize("kwargs, words", [
    ({"format": "tflite"}, ["tflite", "onnx, openvino, engine"]),
    ({"format": "engine"}, ["TensorRT is not installed", "--format onnx"]),
    ({"precision": "fp8"}, ["fp8", "fp32, fp16, int8"]),
    ({"simplifier": "polygraphy"}, ["polygraphy", "onnxslim"]),
    ({"opset": 16}, ["Opset 16", "17 to 20"]),
    ({"opset": 18, "exporter": "dynamo", "precision": "int8"}, ["--calib"]),
    ({"batch": 0}, ["--batch", "at least 1"]),
    ({"imgsz": (0, 32)}, ["--imgsz"]),
])
def test_bad_arguments_raise_before_any_work(tiny_copy, kwargs, words):
    with pytest.raises(XvolError) as info:
        jobs.export_checkpoint(tiny_copy, tiny_copy.parent / "out.onnx", ExportSettings(**kwargs))
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert listing(tiny_copy.parent) == ["train.pth"]


def test_existing_output_is_refused_and_kept(tiny_copy):
    output = tiny_copy.parent / "out.onnx"
    output.write_bytes(b"an older graph")
    with pytest.raises(XvolError, match="already exists.*--force"):
        jobs.export_checkpoint(tiny_copy, output, ExportSettings(seed=8))
    assert output.read_bytes() == b"an older graph"
    result = jobs.export_checkpoint(tiny_copy, output, ExportSettings(seed=8, force=True))
    assert result.passed and onnx.load(str(output)).graph.node
    assert listing(tiny_copy.parent) == ["out.onnx", "train.pth"]


def test_data_of_another_image_size_needs_imgsz_or_dynamic(tiny_copy):
    data = tiny_copy.parent / "data.npz"
    np.savez(data, input=np.zeros((2, 3, 24, 24), np.float32))
    with pytest.raises(XvolError, match=r"--imgsz 32,32.*--dynamic"):
        jobs.export_checkpoint(tiny_copy, tiny_copy.parent / "out.onnx", ExportSettings(data=data))
    assert listing(tiny_copy.parent) == ["data.npz", "train.pth"]
