"""Arguments that would switch a check off, run forever or destroy the input: refused before any work (exit 2),
the input untouched and nothing written."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from xvol_export.errors import XvolError
from xvol_export.io import check_outputs

from helpers import run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "digits_xvol_resnet_tiny.pth"
UNWRITABLE = "/proc/xvol-test-out"  # an existing folder where no file can be created, not even by root


@pytest.fixture
def folder(tmp_path) -> Path:
    shutil.copy(SAMPLE, tmp_path / "m.pth")
    return tmp_path


CASES = {
    "fold over its input": (["fold", "m.pth", "-o", "m.pth", "--force"], "--output names a file this command reads"),
    "fold over its input by another path": (["fold", "m.pth", "-o", "./sub/../m.pth", "--force"],
                                            "--output names a file this command reads"),
    "inspect's JSON over the checkpoint": (["inspect", "m.pth", "--json", "m.pth", "--force"],
                                           "--json names a file this command reads"),
    "verify saving inputs over an input": (["verify", "m.pth", "m.pth", "--save-inputs", "m.pth", "--force"],
                                           "--save-inputs names a file this command reads"),
    "two outputs, one file": (["fold", "m.pth", "-o", "out.pth", "--json", "out.pth"],
                              "--output and --json name the same file"),
    "verify's two saves, one file": (["verify", "m.pth", "m.pth", "--save-inputs", "a.npz", "--save-outputs",
                                      "a.npz"], "--save-inputs and --save-outputs name the same file"),
    "JSON where nothing can be written": (["fold", "m.pth", "-o", "out.pth", "--json", UNWRITABLE + ".json"],
                                          "cannot write in the folder"),
    "output where nothing can be written": (["fold", "m.pth", "-o", UNWRITABLE + ".pth"], "cannot write in the folder"),
    "fold into a folder name": (["fold", "m.pth", "-o", "newdir/"], "-o names a folder"),
    "export into a folder name": (["export", "m.pth", "-o", "newdir/"], "-o names a folder"),
    "bench for ever": (["bench", "m.pth", "--duration", "inf"], "--duration must be a number of seconds"),
    "bench for NaN seconds": (["bench", "m.pth", "--duration", "nan"], "--duration must be a number of seconds"),
    "bench 10^12 calls": (["bench", "m.pth", "--iterations", "1000000000000"], "--iterations must be at most"),
    "bench 10^11 warm-up calls": (["bench", "m.pth", "--warmup", "100000000000"], "--warmup must be at most"),
    "bench 100000 threads": (["bench", "m.pth", "--threads", "100000"], "--threads must be from 1 to"),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_before_any_work_with_the_input_untouched(case, folder, capsys, monkeypatch):
    args, expected = CASES[case]
    monkeypatch.chdir(folder)
    (folder / "sub").mkdir()
    digest = hashlib.sha256((folder / "m.pth").read_bytes()).hexdigest()
    before = sorted(p.name for p in folder.iterdir())
    r = run_cli(capsys, *args)
    assert r.code == 2 and expected in r.message, r.text
    assert hashlib.sha256((folder / "m.pth").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_link_to_the_input_is_the_input(tmp_path):
    source = tmp_path / "m.pth"
    source.write_bytes(b"weights")
    os.link(source, tmp_path / "hard.pth")
    (tmp_path / "soft.pth").symlink_to(source)
    for alias in ("hard.pth", "soft.pth"):
        with pytest.raises(XvolError, match="names a file this command reads"):
            check_outputs({"--output": tmp_path / alias}, [source], force=True)
    check_outputs({"--output": tmp_path / "other.pth", "--json": tmp_path / "r.json"}, [source], force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.pth", "m.pth", "soft.pth"]  # the probe is gone
