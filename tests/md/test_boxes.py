"""The MD boxes (`ekd.md.boxes`): the requested density and count, and no molecule placed on top
of another at liquid density (a lattice with random rotations left ethanol atoms 0.34 Å apart)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.neighborlist import neighbor_list

from ekd.md.boxes import AMU_PER_CM3_FROM_A3, base_box, box_of_size


@pytest.mark.parametrize("name, density, closest", [("CH3CH2OH", 0.79, 1.4), ("H2O", 0.997, 1.6)])
def test_packed_boxes_keep_molecules_apart(name: str, density: float, closest: float) -> None:
    single = molecule(name)
    copies = 120 // len(single)
    base = base_box([single], copies=copies, density=density)
    assert len(base) == copies * len(single)
    assert base.get_masses().sum() * AMU_PER_CM3_FROM_A3 / base.get_volume() == pytest.approx(density, rel=1e-12)
    owner = np.arange(len(base)) // len(single)
    i, j, d = neighbor_list("ijd", base, 2.5)  # periodic: contacts across the box's faces count
    between = owner[i] != owner[j]
    assert d[between].min() >= closest
    # each molecule keeps its own geometry (a rigid rotation and shift)
    reference = np.linalg.norm(single.positions[:, None] - single.positions[None], axis=-1)
    for k in range(copies):
        placed = base.positions[k * len(single):(k + 1) * len(single)]
        assert np.allclose(np.linalg.norm(placed[:, None] - placed[None], axis=-1), reference, atol=1e-9)
    assert len(box_of_size(base, 8 * len(base))) == 8 * len(base)
