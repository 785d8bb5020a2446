"""The shape of the package: imports run down the layers (import-linter's contracts in pyproject.toml), no
import cycle, no module doing several jobs (over 500 lines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xvol_export", "xvol_cli")
LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                "sys.exit(c())", "--no-cache"]


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(LINT_IMPORTS, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    result = _lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_has_a_layer():
    """A module left out of the layers contract would be checked by nothing."""
    tomllib = pytest.importorskip("tomllib")
    layers = next(c["layers"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
                  ["contracts"] if c["type"] == "layers")
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    top_level = {f"xvol_export.{path.stem}" for path in (ROOT / "xvol_export").iterdir()
                 if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()}
    assert top_level - placed == set(), "modules in no layer"
    assert placed - top_level - {"xvol_cli"} == set(), "layers naming no module"


def test_the_contracts_see_an_upward_import_inside_a_function(tmp_path):
    """A fold module that imports a job inside a function (where the old upward imports hid) breaks the build."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "xvol_export" / "fold" / "arithmetic.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted():\n    from xvol_export.jobs import export\n\n"
                       "    return export\n")
    result = _lint_imports(tmp_path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "xvol_export.fold.arithmetic -> xvol_export.jobs.export" in result.stdout


def _strongly_connected(graph, modules: set[str]) -> list[set[str]]:
    """Tarjan's components of the import graph that hold more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle():
    """Counting imports inside functions (grimp reads them): a cycle means something lives in the wrong place."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    cycles = _strongly_connected(graph, set(graph.modules))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_module_does_several_jobs():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    assert sizes, "no modules found"
    assert {path: lines for path, lines in sizes.items() if lines > 500} == {}


def test_the_top_level_offers_what_a_user_needs():
    """``import xvol_export`` loads no PyTorch, and every name it offers resolves (the functions, not the
    subpackages of the same name, even once those are imported)."""
    code = ("import sys, xvol_export as x; assert 'torch' not in sys.modules; "
            "import xvol_export.verify.run, xvol_export.export.onnx_graph, xvol_export.fold.family; "
            "missing = [n for n in x.__all__ if getattr(x, n, None) is None]; assert not missing, missing; "
            "assert callable(x.fold) and callable(x.verify) and callable(x.export); "
            "print(sorted(set(x.__all__) & {'load_model', 'save_checkpoint', 'fold', 'verify', 'export', "
            "'register_family', 'FoldSettings', 'ExportSettings', 'FoldResult', 'ExportResult', 'Tolerance'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(eval(done.stdout)) == 11
