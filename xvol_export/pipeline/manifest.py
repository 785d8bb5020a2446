"""The pipeline's record: ``manifest.json`` (schema: ``manifest.schema.json`` beside this module) and a Markdown
summary for CI job summaries. The pipeline job (:func:`xvol_export.jobs.pipeline.run_pipeline`) writes the
manifest; ``result`` below is its :class:`~xvol_export.jobs.pipeline.PipelineResult`."""

from __future__ import annotations

import os
from pathlib import Path

from xvol_export.env import machine, package_versions
from xvol_export.io import build_timestamp, sha256_file
from xvol_export.jsonio import write_json
from xvol_export.pipeline.overview import overview_rows, overview_table
from xvol_export.version import __version__

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


def _checks(result) -> list[dict]:
    checks = []
    first = result.exports[0] if result.exports else None
    if first is not None and first.fold_verification is not None:
        checks.append({"stage": "fold", "status": "PASSED" if first.fold_verification.passed else "FAILED",
                       "figures": first.fold_verification.to_dict()})
    for export in result.exports:
        stage = f"{export.format} {export.precision}"
        reports = [export.artifact_verification, *([export.dynamic_check] if export.format == "onnx" else [])]
        for report in (r for r in reports if r is not None):
            checks.append({"stage": stage, "status": "PASSED" if report.passed else "FAILED",
                           "figures": report.to_dict()})
        for failure in export.failures:
            checks.append({"stage": stage, "status": "FAILED", "reason": failure})
    checks += [{"stage": s["stage"], "status": "SKIPPED", "reason": s["reason"]} for s in result.skipped]
    checks += [{"stage": "pipeline", "status": "FAILED", "reason": f} for f in result.failures]
    return checks


def manifest(result) -> dict:
    """Every artifact (file, format, precision, sha256, size), every check with its figures and verdict, one
    overview row per artifact (``formats``), the settings, versions, machine and the time of each stage."""
    out = Path(result.out_dir)
    artifacts = []
    for export in result.exports:
        for name in export.files:
            path = Path(name)
            entry = {"file": os.path.relpath(path, out), "format": export.format, "precision": export.precision,
                     "sha256": sha256_file(path), "size": path.stat().st_size}
            if export.int8:  # how the int8 graph is laid out, and for which runtime and ISA
                entry["int8_layout"] = export.int8["layout"]
            artifacts.append(entry)
    return {
        "command": "pipeline",
        "schema_version": SCHEMA_VERSION,
        "status": "PASSED" if result.passed else "FAILED",
        "failure": result.failure_summary() or None,
        "created": build_timestamp(),
        "source": {"file": result.source, "sha256": sha256_file(result.source),
                   "size": Path(result.source).stat().st_size},
        "settings": result.settings.to_dict(),
        "seed": result.seed,
        "artifacts": artifacts,
        "checks": _checks(result),
        "formats": overview_rows(result),
        "golden": _golden(result),
        "bench": [b.to_dict() for b in result.bench],
        "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
        "tool": {"name": "xvol", "version": __version__},
        "versions": package_versions(),
        "machine": machine(),
    }


def _golden(result) -> dict | None:
    if result.golden is None:
        return None
    path = Path(result.golden)
    return {"file": os.path.relpath(path, Path(result.out_dir)), "sha256": sha256_file(path),
            "size": path.stat().st_size, "precisions": list(result.settings.precisions)}


def write_manifest(result, force: bool = False) -> tuple[Path, dict]:
    """Write ``manifest.json`` into the pipeline's folder (the pipeline job does, as its last step); returns its
    path and content."""
    content = manifest(result)
    path = Path(result.out_dir) / MANIFEST
    write_json(path, content, force)
    return path, content


def summary_markdown(content: dict) -> str:
    """The manifest as Markdown: verdict, the overview of every format, checks, artifacts, benchmark (for
    ``$GITHUB_STEP_SUMMARY``)."""
    lines = [f"## xvol pipeline: {content['status']}", ""]
    if content["failure"]:
        lines += [f"**Failed:** {content['failure']}", ""]
    lines += [f"Source `{Path(content['source']['file']).name}` (sha256 `{content['source']['sha256'][:16]}`), "
              f"xvol {content['tool']['version']}, " + (f"verified on `{content['settings']['data']}`."
                                                         if content["seed"] is None else f"seed {content['seed']}."),
              "",
              f"Verdicts made on {_isa_line(content['machine'])}: they hold for that instruction set.", "",
              *overview_markdown(content), "",
              "| check | status | rel L2 | vs baseline | top-1 agreement | accuracy |",
              "| --- | --- | --- | --- | --- | --- |"]
    for check in content["checks"]:
        figures = check.get("figures") or {}
        first = (figures.get("outputs") or [{}])[0]
        candidate = first.get("candidate") or {}
        ratio = first.get("ratio_rel_l2") if figures.get("precision") != "int8" else None  # int8: other gates
        accuracy = (figures.get("accuracy") or {}).get("candidate")
        lines.append(f"| {check['stage']} | {check['status']} | {_num(candidate.get('rel_l2'))} | "
                     f"{_num(ratio, 'x')} | {_pct(candidate.get('top1_agreement'))} | {_pct(accuracy)} |"
                     if figures else f"| {check['stage']} | {check['status']} | {check.get('reason', '')} | | | |")
    if content.get("golden"):
        golden = content["golden"]
        lines += ["", f"Golden file `{golden['file']}` (sha256 `{golden['sha256'][:16]}`): on the machine that runs "
                  f"an artifact, `xvol verify ARTIFACT --golden {golden['file']}` gives it this verdict there."]
    lines += ["", "| artifact | format | precision | size | sha256 |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{a['file']}` | {a['format']} | {_precision(a)} | {a['size']:,} | `{a['sha256'][:16]}` |"
              for a in content["artifacts"]]
    for report in content["bench"]:
        lines += ["", "| benchmarked | backend | batch | prec | median ms | vs first |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| `{c['artifact']}` | {c['backend']} | {c['batch']} | {c.get('precision') or ''} | "
                  f"{c['latency_ms']['median']:.2f} | {_num(c['ratio_to_first'], 'x')} |" for c in report["cases"]]
    return "\n".join(lines) + "\n"


def overview_markdown(content: dict) -> list[str]:
    """The manifest's ``formats`` as a Markdown table (latency on each artifact's own runtime, per batch)."""
    header, cells = overview_table(content.get("formats") or [])
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in cells)]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _precision(artifact: dict) -> str:
    layout = artifact.get("int8_layout")
    if not layout:
        return artifact["precision"]
    return (f"{artifact['precision']} ({layout['target']}: {layout['activations']} activations, "
            f"{layout['weight_bits']}-bit weights)")


def _isa_line(machine_info: dict) -> str:
    isa = ", ".join(machine_info.get("isa") or []) or "no AVX2"
    cap = machine_info.get("onednn_cap")
    capped = f"; oneDNN capped at {cap}: {', '.join(machine_info.get('onednn_isa') or []) or 'no AVX2'}" if cap else ""
    threads = machine_info.get("torch_threads")
    versions = ", ".join(f"{k} {v}" for k, v in (machine_info.get("versions") or {}).items()
                         if k in ("onnxruntime", "openvino", "torch"))
    return (f"{machine_info['cpu']} ({isa}{capped}), {machine_info.get('logical_cores')} cores"
            + (f", {threads} PyTorch threads" if threads else "") + (f"; {versions}" if versions else ""))


def _num(value, suffix: str = "") -> str:
    return f"{value:.3g}{suffix}" if isinstance(value, (int, float)) else ""


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else ""
