"""The pipeline's overview: one row per artifact, as deployment benchmarks print their formats (format, precision,
verdict, size, accuracy and error against the float64 reference, latency on the artifact's own runtime at each
benchmarked batch), the training form first as the reference row and each skipped format last."""

from __future__ import annotations

import os
from pathlib import Path


def overview_rows(result) -> list[dict]:
    """The rows of ``result`` (a :class:`~xvol_export.jobs.pipeline.PipelineResult`), JSON-plain: the manifest's
    ``formats``."""
    # imported here: the command line renders these rows where PyTorch cannot be imported (golden-file verdicts)
    from xvol_export.export.int8.options import TARGET_OF_FORMAT

    out = Path(result.out_dir)
    latency = _latency_by_artifact(result.bench)
    rows = []
    first = next((e.verification for e in result.exports if e.verification is not None), None)
    if first is not None:
        accuracy = first.accuracy or {}
        rows.append({"format": "checkpoint", "precision": "float64", "file": Path(result.source).name,
                     "status": "REFERENCE", "size": Path(result.source).stat().st_size,
                     "accuracy": accuracy.get("reference"), "rel_l2": None, "top1_agreement": None,
                     "runtime": "pytorch", "latency_ms": {}})
    for export in result.exports:
        report = export.artifact_verification
        main = Path(export.output)
        accuracy = (report.accuracy or {}).get("candidate") if report is not None else None
        rows.append({
            "format": export.format,
            "precision": export.precision,
            "file": os.path.relpath(main, out),
            "status": "PASSED" if export.passed else "FAILED",
            "size": sum(Path(f).stat().st_size for f in export.files if _belongs(Path(f), export.format)),
            "accuracy": accuracy,
            "rel_l2": max((c.candidate.rel_l2 for c in report.checks), default=None) if report else None,
            "top1_agreement": report.output.top1_agreement if report is not None else None,
            "runtime": TARGET_OF_FORMAT[export.format],
            "latency_ms": latency.get((str(main), TARGET_OF_FORMAT[export.format]), {}),
        })
    rows += [{"format": skip["stage"], "precision": None, "file": None, "status": "SKIPPED", "reason": skip["reason"],
              "latency_ms": {}} for skip in result.skipped]
    return rows


def _latency_by_artifact(reports) -> dict[tuple[str, str], dict[str, float]]:
    """(file, backend) -> {batch: median ms} (device time where measured)."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for report in reports:
        for case in report.cases:
            table.setdefault((str(case.file), case.backend), {})[str(case.batch)] = case.latency.median
    return table


def _belongs(path: Path, fmt: str) -> bool:
    """The artifact's own files (an IR's .bin, an engine's sidecar), not the graph an engine was built from; a
    failed run's files may be gone."""
    return path.is_file() and (fmt == "onnx" or path.suffix != ".onnx")


def overview_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of ``rows`` as text, one latency column per benchmarked batch: what the Markdown
    summary and the command line print. A skipped format's reason is cut to its first clause (the checks table
    has it whole)."""
    batches = sorted({int(b) for row in rows for b in row["latency_ms"]})
    header = ["format", "precision", "status", "size (MB)", "accuracy", "rel L2 vs float64", "runtime",
              *(f"ms, batch {b}" for b in batches)]
    cells = []
    for row in rows:
        if row["status"] == "SKIPPED":
            cells.append([row["format"], "", "SKIPPED", "", "", "", row["reason"].split(" (")[0], *[""] * len(batches)])
            continue
        latency = row["latency_ms"]
        cells.append([row["format"], row["precision"], row["status"], f"{row['size'] / 1e6:.3f}",
                      "" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f} %",
                      "" if row["rel_l2"] is None else f"{row['rel_l2']:.3g}", row["runtime"],
                      *(f"{latency[str(b)]:.3f}" if str(b) in latency else "" for b in batches)])
    return header, cells
