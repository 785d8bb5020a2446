"""The wheel carries every module and data file of the two packages, and nothing else at its top level."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xvol_export", "xvol_cli")
DATA_SUFFIXES = (".py", ".json")


def test_the_wheel_carries_every_module_and_data_file(tmp_path):
    source = tmp_path / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("xvol-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*")
                if path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts}
    assert expected - names == set(), "missing from the wheel"
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == set(PACKAGES)  # never a generic `cli`, `tests` or `benchmarks` in users' environments
