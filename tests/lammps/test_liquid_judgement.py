"""examples/lammps/liquid.py's judgement of a water box: a hydrogen that leaves its oxygen, one
that moves to another molecule and one that falls into its own oxygen each make the box
non-molecular."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

LIQUID = Path(__file__).resolve().parents[2] / "examples" / "lammps" / "liquid.py"


def liquid_module():
    spec = importlib.util.spec_from_file_location("liquid_example", LIQUID)
    module = importlib.util.module_from_spec(spec)
    sys.modules["liquid_example"] = module
    spec.loader.exec_module(module)
    return module


def frame(positions: np.ndarray) -> np.ndarray:
    """A dump table: id, x, y, z."""
    return np.column_stack([np.arange(1, len(positions) + 1), positions])


def test_collapsed_stretched_and_moved_hydrogens_are_not_molecular() -> None:
    molecular = liquid_module().molecular
    water = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    start = np.concatenate([water + [1.0, 1.0, 1.0], water + [5.0, 5.0, 5.0]])   # two waters, 10 Å box
    species = np.array([8, 1, 1, 8, 1, 1])
    assert molecular({0: frame(start), 10: frame(start + 0.01)}, species, 10.0)["stayed_molecular"]
    collapsed = start.copy()
    collapsed[1] = collapsed[0] + [0.2, 0, 0]                     # O–H 0.2 Å: fallen into its oxygen
    stretched = start.copy()
    stretched[1] = stretched[0] + [1.7, 0, 0]                     # O–H 1.7 Å > 1.6 × 0.96
    moved = start.copy()
    moved[1] = start[3] + [0.9, 0, 0]                             # now nearest the other oxygen
    for bad, key in ((collapsed, "collapsed_bonds"), (stretched, "broken_bonds"), (moved, "h_elsewhere")):
        result = molecular({0: frame(start), 10: frame(bad)}, species, 10.0)
        assert not result["stayed_molecular"] and result["frames"][1][key] >= 1, (key, result["frames"][1])
    assert molecular({0: frame(start), 10: frame(collapsed)}, species, 10.0)["frames"][1]["min_o_h_bond"] < 0.21
