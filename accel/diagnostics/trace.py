"""Host-safe: per-step cache decisions as records, their summary and JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    """One transformer forward: a (step, expert, CFG branch) and what cache-dit decided."""

    step: int
    expert: str  # "high" | "low"
    branch: str  # "cond" | "uncond"
    scm: int | None  # the step's SCM bit as given to cache-dit, None without a mask
    decision: str  # "compute" | "cache"
    residual_diff: float | None
    threshold: float | None
    taylorseer: bool
    wall_ms: float
    timestep: float
    local_step: int  # the step index inside this expert's cache context
    ranks: int = 1  # how many ranks ran this forward
    ranks_agreed: bool = True  # every one of them took the same decision

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def row_key(record: StepRecord) -> str:
    return f"{record.expert}/{record.branch}"


@dataclass
class Trace:
    records: list[StepRecord] = field(default_factory=list)
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # settings, timings, memory

    def add(self, records: Iterable[StepRecord]) -> None:
        self.records.extend(records)

    def summary(self) -> dict[str, Any]:
        rows: dict[str, dict[str, int]] = {}
        for record in self.records:
            counts = rows.setdefault(row_key(record), {"compute": 0, "cache": 0})
            counts[record.decision] += 1
        forwards = len(self.records)
        computed = sum(r["compute"] for r in rows.values())
        return {
            "rows": rows,
            "forwards": forwards,
            "computed": computed,
            "cached": forwards - computed,
            # Transformer forwards the cache saved: total over computed (Fn blocks still run).
            "compute_speedup": forwards / computed if computed else None,
            "ranks_agreed": all(r.ranks_agreed for r in self.records),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "records": [r.to_dict() for r in self.records],
            "summary": self.summary(),
            "info": self.info,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        return cls(
            records=[StepRecord(**r) for r in data["records"]], steps=data["steps"], info=data.get("info", {})
        )
