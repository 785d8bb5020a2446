"""The README's first commands are what newcomers copy: keep them true and in step with CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _first_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block of commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_run_and_test_commands():
    run, test = _first_commands()[:2]
    assert "pip install torch==2.13.0" in run and "xvol fold samples/" in run
    assert "pip install torch==2.13.0" in test and "pytest" in test


def test_ci_runs_the_readme_test_command():
    """Word for word: a newcomer who copies it installs what CI installs and runs the suite CI runs."""
    ci = (ROOT / ".ci" / "run").read_text()
    command = _first_commands()[1]
    assert command in ci.splitlines(), f"CI lacks the README's test command: {command}"
    installs = [line for line in ci.splitlines() if "pip install" in line and line != command]
    assert not installs, f"CI installs what the README's test command does not: {installs}"


def test_sample_files_named_in_readme_exist():
    run = _first_commands()[0]
    for path in re.findall(r"samples/[\w./-]+", run):
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"


def test_readme_gate_table_states_the_default_gates():
    """The verification table is the documentation of DEFAULT_GATES: a changed default must change it."""
    from xvol_export.verify import DEFAULT_GATES

    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    for gate in DEFAULT_GATES.values():
        row = next(r for r in rows if r.startswith(f"| {gate.precision}"))
        expected = []
        if gate.factor is not None:
            expected.append(f"**{gate.factor:g}x**")
        if gate.max_error_factor is not None:
            expected.append(f"**{gate.max_error_factor:g}x**")
        expected += [f"**{bound:g}**" for bound in (gate.max_rel_l2, gate.max_error_rms, gate.min_cosine) if bound]
        if gate.min_top1 is not None:
            expected.append(f"**{100 * gate.min_top1:g} %**")
        if gate.max_accuracy_drop is not None:
            expected.append(f"**{100 * gate.max_accuracy_drop:g} point**")
        for text in expected:
            assert text in row, f"README's {gate.precision} row lacks {text}: {row}"


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python API example, as it is, from a folder holding the samples (its outputs land there)."""
    section = README.read_text().split("## Python API\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    assert (tmp_path / "digits.deploy.pth").is_file() and (tmp_path / "digits.fp16.onnx").is_file()
