"""Neighbour pairs within a cutoff, for molecules and for periodic cells.

Pairs are directed (i→j and j→i both listed), grouped by conformation and by receiver `i`.
Molecules are handled in vectorised blocks of equal size (distance matrices); periodic
conformations use ASE's neighbour list, which also gives the lattice shift of each pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .dataset import AtomsData

_BLOCK_ELEMENTS = 4_000_000  # distance-matrix entries per vectorised block (about 100 MB)


@dataclass
class Pairs:
    """receiver (P,), sender (P,) atom indices local to their conformation; shift (P, 3) Å
    added to the sender position (None when no conformation is periodic); n_pairs (C,)."""

    receiver: np.ndarray
    sender: np.ndarray
    n_pairs: np.ndarray
    shift: Optional[np.ndarray] = None

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_pairs)])


def neighbor_pairs(data: AtomsData, cutoff: float) -> Pairs:
    """All directed pairs closer than `cutoff` (Å) in every conformation of `data`."""
    periodic = data.pbc.any(axis=1) if data.pbc is not None else np.zeros(len(data), dtype=bool)
    conf_ids, receivers, senders, shifts = [], [], [], []
    for n in np.unique(data.n_atoms[~periodic]):
        confs = np.flatnonzero((data.n_atoms == n) & ~periodic)
        block = max(1, _BLOCK_ELEMENTS // int(n * n))
        for start in range(0, len(confs), block):
            c, i, j = _molecule_pairs(data, confs[start:start + block], int(n), cutoff)
            conf_ids.append(c)
            receivers.append(i)
            senders.append(j)
            shifts.append(np.zeros((len(c), 3)))
    for conf in np.flatnonzero(periodic):
        c, i, j, s = _periodic_pairs(data, int(conf), cutoff)
        conf_ids.append(c)
        receivers.append(i)
        senders.append(j)
        shifts.append(s)
    if not conf_ids:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(len(data), dtype=np.int64))
    conf = np.concatenate(conf_ids)
    order = np.argsort(conf, kind="stable")
    return Pairs(
        receiver=np.concatenate(receivers)[order],
        sender=np.concatenate(senders)[order],
        n_pairs=np.bincount(conf, minlength=len(data)),
        shift=np.concatenate(shifts)[order] if periodic.any() else None,
    )


def _molecule_pairs(data: AtomsData, confs: np.ndarray, n: int, cutoff: float):
    atoms = data.atom_indices(confs)
    pos = data.positions[atoms].reshape(len(confs), n, 3)
    dist2 = np.sum((pos[:, None, :, :] - pos[:, :, None, :]) ** 2, axis=-1)
    mask = dist2 < cutoff * cutoff
    mask[:, np.arange(n), np.arange(n)] = False
    c, i, j = np.nonzero(mask)
    return confs[c], i, j


def _periodic_pairs(data: AtomsData, conf: int, cutoff: float):
    from ase.neighborlist import primitive_neighbor_list

    start, stop = data.offsets[conf], data.offsets[conf + 1]
    cell = data.cell[conf]
    i, j, shift_int = primitive_neighbor_list(
        "ijS", data.pbc[conf], cell, data.positions[start:stop], cutoff, self_interaction=False
    )
    order = np.lexsort((j, i))
    i, j, shift_int = i[order], j[order], shift_int[order]
    return np.full(len(i), conf), i, j, shift_int @ cell
