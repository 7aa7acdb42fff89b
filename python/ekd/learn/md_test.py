"""A test set of MD-sampled frames with true forces: a fraction (`[learn] md_test_fraction`) of
each round's labelled frames that carry the oracle's forces is held out of training
(`round_k/md_test.h5`, the additions layout), and every round's models are measured on the frames
held out so far, beside the original test split. The original test split says how well the
models know the data; this one says how well they know where their dynamics go."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..data import DataSpec, GraphData, concatenate, read_data
from ..data.readers import ADDITIONS_KEYS
from ..evaluate import split_metrics
from ..run_directory import RunDirectory
from ..summary import run_predictions, trained_models

MD_TEST_NAME = "md_test.h5"


def hold_out(has_forces: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) True for the frames to hold out: round(fraction × frames with forces) of them, drawn
    among those with forces, always leaving at least one frame to train on."""
    held = np.zeros(len(has_forces), dtype=bool)
    candidates = np.flatnonzero(has_forces)
    count = min(int(round(fraction * len(candidates))), len(has_forces) - 1)
    if count > 0:
        held[rng.choice(candidates, size=count, replace=False)] = True
    return held


def md_test_errors(run: RunDirectory, paths: List[Path]) -> Dict[str, Any]:
    """Energy and force RMSE (eV, eV/Å) of the run's teachers' mean, student and baseline on the
    held-out frames of `paths`; {} when there are none."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return {}
    parts = [read_data(DataSpec(path=str(p), **ADDITIONS_KEYS)) for p in paths]
    data = concatenate(parts, " + ".join(str(p) for p in paths))
    predictions, _ = run_predictions(
        run, trained_models(run),
        lambda cutoff: GraphData(data, run.elements, cutoff, run.dtype, run.config.run.device),
        {"md_test": np.arange(len(data))})
    out: Dict[str, Any] = {"frames": len(data)}
    for name, by_split in predictions.items():
        metrics = split_metrics(by_split["md_test"], data)
        out[name] = {"energy_rmse": metrics.get("energy_rmse"), "force_rmse": metrics.get("force_rmse")}
    return out
