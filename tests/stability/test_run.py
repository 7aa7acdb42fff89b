"""Picking the starting molecules of a stability study from a data set."""

from __future__ import annotations

import numpy as np

from ekd.data import AtomsData
from ekd.stability import pick_molecules


def test_pick_molecules() -> None:
    data = AtomsData(species=np.array([8, 1, 1] * 3 + [1, 1]), positions=np.arange(33, dtype=float).reshape(11, 3),
                     n_atoms=np.array([3, 3, 3, 2]), energy=np.array([-5.0, -7.0, -6.0, -1.0]),
                     group=np.array([0, 0, 0, 1]), group_names=["H2O", "H2"])
    lowest = pick_molecules(data, "lowest")
    assert [m.name for m in lowest] == ["H2O", "H2"]
    assert np.allclose(lowest[0].positions, data.positions[3:6])   # conformation 1 has the lowest energy
    assert np.allclose(pick_molecules(data, "first")[0].positions, data.positions[0:3])
    assert [m.name for m in pick_molecules(data, "all")] == ["H2O#0", "H2O#1", "H2O#2", "H2#0"]
    assert len(pick_molecules(data, "lowest", limit=1)) == 1
