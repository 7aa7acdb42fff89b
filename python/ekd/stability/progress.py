"""Finished trajectories, kept in OUT/progress.json as each one ends, so that a killed study
resumes where it stopped.

A trajectory is deterministic given its model file, start, seed, MD settings and criterion (one
torch thread, the generator seeded per start and seed), so a rerun reuses a kept result only
when all of these match: each result is filed under a digest of them. A rerun with anything
changed computes afresh; results of other settings stay in the file and cost nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..fileio import atomic_write_text, file_sha256
from .trajectories import TrajectoryResult

PROGRESS_FILE = "progress.json"
# Part of every key: a change to what the criterion checks (not only its numbers) must not reuse
# results judged the old way. 2: collapsed bonds fail too (2026-12-02).
CRITERION_VERSION = 2


def digest(*parts: Any) -> str:
    """A stable digest of JSON-able parts (arrays as their exact float64 / int64 bytes)."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            hasher.update(np.ascontiguousarray(part, dtype=np.int64 if part.dtype.kind in "iu" else np.float64)
                          .tobytes())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def start_digest(species: np.ndarray, positions: np.ndarray, cell: Optional[np.ndarray] = None) -> str:
    return digest(species, positions, np.zeros(0) if cell is None else cell)


def plain(settings: Any) -> Dict[str, Any]:
    """Settings as a dict, without the number of seeds: one trajectory does not depend on how
    many others run beside it (a study can be extended to more seeds)."""
    table = settings if isinstance(settings, dict) else asdict(settings)
    return {k: v for k, v in table.items() if k != "seeds"}


class FinishedTrajectories:
    """The results kept so far in `out`/progress.json, read once, rewritten atomically per result."""

    def __init__(self, out: Path, say: Callable[[str], None] = print) -> None:
        self.path = Path(out) / PROGRESS_FILE
        self.results: Dict[str, Dict[str, Any]] = self._read(say)
        self.reused = 0
        self._model_digests: Dict[str, str] = {}

    def _read(self, say: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            kept = json.loads(self.path.read_text())
            if not isinstance(kept, dict) or not all(isinstance(row, dict) for row in kept.values()):
                raise ValueError("not a table of trajectory results")
        except (OSError, ValueError) as err:
            say(f"{self.path}: unreadable ({err}); every trajectory runs afresh")
            return {}
        say(f"{self.path}: {len(kept)} finished trajectories kept; those of the same models and settings are reused")
        return kept

    def key(self, model_path: Path, start: str, seed: int, *settings: Any) -> str:
        """The digest a trajectory's result is filed under: model file content, start, seed and settings."""
        path = str(Path(model_path).resolve())
        if path not in self._model_digests:
            self._model_digests[path] = file_sha256(Path(path))
        return digest(CRITERION_VERSION, self._model_digests[path], start, seed, *[plain(s) for s in settings])

    def get(self, key: str, model: str) -> Optional[TrajectoryResult]:
        row = self.results.get(key)
        names = {f.name for f in fields(TrajectoryResult)}
        if row is None or set(row) != names:
            return None
        self.reused += 1
        return TrajectoryResult(**{**row, "model": model})

    def put(self, key: str, row: TrajectoryResult) -> None:
        self.results[key] = asdict(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.results))
