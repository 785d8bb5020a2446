"""The one shape every job's result has: a verdict, what failed and by how much, files, timings, notes."""

from __future__ import annotations

from dataclasses import dataclass, field

from xvol_export.env import machine


@dataclass(kw_only=True)
class JobResult:
    """The fields and verdict every job result shares (``xvol fold``, ``verify``, ``export``, ``bench``,
    ``pipeline``, ``inspect``): ``files`` written (empty when nothing was), each stage's ``timings`` in
    seconds, ``notes`` for the user; ``passed`` and :meth:`failure_summary` are each job's own."""

    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return True

    def failure_summary(self) -> str:
        """What failed and by how much; empty when the job passed."""
        return ""

    def job_fields(self) -> dict:
        """The shared part of every ``to_dict``: verdict, failure, files, timings, notes, and the machine the
        verdict was made on (a verdict holds for that ISA)."""
        return {"passed": self.passed, "failure": self.failure_summary(), "files": list(self.files),
                "timings_s": dict(self.timings), "notes": list(self.notes), "machine": machine()}
