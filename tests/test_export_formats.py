"""The export formats as a table, the int8 options checked once, and the staging helper: no model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvol_export import cleanup
from xvol_export.errors import XvolError
from xvol_export.export.formats import FORMATS, GRAPH_PRECISIONS, output_for
from xvol_export.export.int8 import TARGET_OF_FORMAT, Int8Options


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_row_names_its_files_precisions_and_maker(name, tmp_path):
    row = FORMATS[name]
    output = output_for(tmp_path / "model.pth", "fp32", name)
    assert output.suffix == row.suffix and row.files(output)[0] == output
    assert set(GRAPH_PRECISIONS) <= set(row.precisions)
    assert row.int8_target == TARGET_OF_FORMAT[name] and callable(row.make)
    assert (row.make_from_file is None) == (name == "onnx")  # the others are made from a written graph too


def test_int8_options_are_checked_when_made():
    with pytest.raises(XvolError, match="calib_method"):
        Int8Options(method="median")
    with pytest.raises(XvolError, match="int8_target"):
        Int8Options(target="tflite")
    with pytest.raises(XvolError, match="int8_weight_bits"):
        Int8Options(weight_bits="4")
    options = Int8Options(budget="cosine=0.98", weight_bits=7)
    assert options.budget.value == 0.98 and options.weight_bits == "7" and options.measures
    assert Int8Options().target_for("engine") == "tensorrt" and Int8Options(target="openvino").target_for("engine") \
        == "openvino"


def test_staged_files_live_beside_the_target_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "model.xml"
    with cleanup.staged(target) as aside:
        assert aside.name == target.name and aside.parent.parent == tmp_path
        aside.write_text("checked")
        aside.replace(target)
    assert sorted(Path(p).name for p in tmp_path.iterdir()) == ["model.xml"]
    with pytest.raises(RuntimeError), cleanup.staged(target) as aside:
        aside.write_text("not checked")
        raise RuntimeError
    assert sorted(Path(p).name for p in tmp_path.iterdir()) == ["model.xml"]
