"""Where everything of a run lives: the only module that spells a run directory's layout.

    <out>/config.toml          the resolved configuration (a later invocation must match it)
    <out>/split.json           train/val/test conformation indices
    <out>/references.json      per-element reference energies (eV)
    <out>/teachers/teacher_k/  checkpoint.pt, metrics.jsonl
    <out>/labels.h5            the teachers' labels (see ekd.distill.labels)
    <out>/augmented.h5         conformations the teachers labelled beyond the data (ekd.distill.augment)
    <out>/student/, baseline/  checkpoint.pt, metrics.jsonl
    <out>/summary.json, summary.md, plots/*.png

It needs no data and imports nothing of training, so `ekd.export`, `ekd.bench` and
`ekd.evaluate` find a run's models with it; `ekd.run_directory.RunDirectory` adds the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from .errors import ModelFileError
from .models.io import CHECKPOINT_NAME

TEACHERS = "teachers"
STUDENT = "student"
BASELINE = "baseline"
ENSEMBLE = "ensemble"   # all teachers as one model (export, bench); no folder of its own


def teacher_name(k: int) -> str:
    return f"teacher_{k}"


@dataclass
class RunLayout:
    """Paths of one run directory."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def split_path(self) -> Path:
        return self.root / "split.json"

    @property
    def references_path(self) -> Path:
        return self.root / "references.json"

    @property
    def teachers_dir(self) -> Path:
        return self.root / TEACHERS

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.h5"

    @property
    def augmented_path(self) -> Path:
        return self.root / "augmented.h5"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def teacher_dir(self, k: int) -> Path:
        return self.teachers_dir / teacher_name(k)

    def model_dir(self, name: str) -> Path:
        """The folder of a trained model: `student`, `baseline` or `teacher_K`."""
        return self.teachers_dir / name if name.startswith("teacher_") else self.root / name

    def checkpoint(self, name: str) -> Path:
        return self.model_dir(name) / CHECKPOINT_NAME

    def teacher_names(self) -> List[str]:
        """Teachers with a checkpoint on disk, in index order."""
        found = [p.parent.name for p in self.teachers_dir.glob(f"teacher_*/{CHECKPOINT_NAME}")]
        return sorted(found, key=lambda name: int(name.split("_")[1]))

    def checkpoints_for(self, model: str) -> List[Path]:
        """The checkpoint(s) behind a model name: one, or every teacher's for `ensemble`."""
        if model == ENSEMBLE:
            names = self.teacher_names()
            if not names:
                raise ModelFileError(f"{self.root}: no teacher checkpoints in {self.teachers_dir}")
            return [self.checkpoint(name) for name in names]
        path = self.checkpoint(model)
        if not path.exists():
            raise ModelFileError(f"{self.root}: no checkpoint for model {model!r} (looked for {path})")
        return [path]


def checkpoints_for(source: Path, model: str) -> List[Path]:
    """The checkpoint(s) behind `model` in a run directory, or `source` itself if it is a file."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ModelFileError(f"{source}: neither a run directory nor a checkpoint file")
    return RunLayout(source).checkpoints_for(model)
