"""Deterministic train/validation/test splits, saved in the run directory.

`test_selection = "random"` draws the test set at random (by seed); `"has_forces"` uses
exactly the conformations that carry true forces (the embedded coupled-cluster set computed
CCSD(T) gradients only for its test conformations). Train and validation are then drawn
at random from the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from .dataset import AtomsData

SPLITS = ("train", "val", "test")


@dataclass
class SplitSpec:
    """The `[split]` table of a run config.

    seed:            seed of the random assignment.
    val_fraction:    fraction of the non-test conformations used for validation.
    test_fraction:   fraction of all conformations held out for testing (random selection).
    test_selection:  random | has_forces.
    max_train:       cap on training conformations (0 = no cap); handy for learning curves.
    """

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    test_selection: str = "random"
    max_train: int = 0

    def check(self) -> None:
        if self.test_selection not in ("random", "has_forces"):
            raise ConfigError(f"[split] test_selection must be 'random' or 'has_forces', got {self.test_selection!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"[split] val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"[split] test_fraction must be in [0, 1), got {self.test_fraction}")


def make_split(data: AtomsData, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Indices of the train/val/test conformations (sorted), deterministic in `spec.seed`."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    n = len(data)
    if spec.test_selection == "has_forces":
        test_mask = data.has_forces
        if not test_mask.any():
            raise DataError(f"{data.source}: test_selection = 'has_forces' but no conformation has forces")
        test = np.flatnonzero(test_mask)
        rest = np.flatnonzero(~test_mask)
    else:
        order = rng.permutation(n)
        n_test = int(round(spec.test_fraction * n))
        test, rest = order[:n_test], order[n_test:]
    rest = rng.permutation(rest)
    n_val = int(round(spec.val_fraction * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    if spec.max_train:
        train = train[: spec.max_train]
    if len(train) == 0:
        raise DataError(f"{data.source}: no training conformations left after the split "
                        f"({n} conformations, val_fraction {spec.val_fraction}, test {len(test)})")
    if len(val) == 0:
        raise DataError(f"{data.source}: the validation split is empty; raise [split] val_fraction")
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def save_split(split: dict[str, np.ndarray], path: Path) -> None:
    """Write the split as JSON atomically."""
    atomic_write_text(path, json.dumps({k: v.tolist() for k, v in split.items()}))


def load_split(path: Path, n_conformations: int) -> dict[str, np.ndarray]:
    """Read a saved split and check it fits the data."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the saved split ({err})") from None
    split = {k: np.asarray(raw.get(k, []), dtype=np.int64) for k in SPLITS}
    for name, idx in split.items():
        if idx.size and (idx.min() < 0 or idx.max() >= n_conformations):
            raise DataError(f"{path}: split {name!r} refers to conformation {int(idx.max())} but the data "
                            f"have {n_conformations}; the data changed since the run started")
    return split
