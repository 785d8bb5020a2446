"""The README's first commands are what newcomers copy: keep them true and in step with CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [s.strip() for s in _first_commands()[1].split("&&")]
    for step in steps:
        if step.startswith(". "):
            continue  # activation is spelled the same way, checked below
        assert step.replace("'", "") in ci.replace("--quiet ", "").replace("'", ""), f"CI lacks: {step}"
    assert ". .venv/bin/activate" in ci


def test_sample_files_named_in_readme_exist():
    run = _first_commands()[0]
    for path in re.findall(r"samples/[\w./-]+", run):
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
