"""Finished jobs' decision traces on disk (one JSON per prompt), for the panel's routes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class TraceStore:
    def __init__(self, root: Path, keep: int = 200):
        self.root = root
        self.keep = keep

    def _path(self, prompt_id: str) -> Path:
        if not SAFE_ID.match(prompt_id):
            raise KeyError(prompt_id)
        return self.root / f"{prompt_id}.json"

    def save(self, prompt_id: str, node_id: str | None, trace: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"prompt_id": prompt_id, "node_id": node_id, "finished_at": time.time(), "trace": trace}
        self._path(prompt_id).write_text(json.dumps(record))
        for old in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime)[: -self.keep]:
            old.unlink(missing_ok=True)

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        try:
            path = self._path(prompt_id)
        except KeyError:
            return None
        return json.loads(path.read_text()) if path.is_file() else None

    def list(self) -> list[dict[str, Any]]:
        items = []
        for path in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            record = json.loads(path.read_text())
            items.append({"prompt_id": record["prompt_id"], "node_id": record["node_id"],
                          "finished_at": record["finished_at"], "steps": record["trace"]["steps"],
                          "summary": record["trace"]["summary"]})
        return items
