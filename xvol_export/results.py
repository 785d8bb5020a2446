"""The one shape every job's result has: a verdict, what failed and by how much, files, timings, notes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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

    def own_fields(self) -> dict:
        """This result's own dataclass fields, in the order declared, as JSON-plain data (a field with
        ``metadata={"json": False}`` is left out)."""
        shared = {f.name for f in fields(JobResult)}
        return {f.name: json_plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in shared and f.metadata.get("json", True)}

    def to_dict(self) -> dict:
        """The shared fields, then this result's own."""
        return {**self.job_fields(), **self.own_fields()}


def json_plain(value):
    """``value`` as JSON-plain data: what has ``to_dict`` gives that, lists and tuples become lists of plain data."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [json_plain(item) for item in value]
    return value
