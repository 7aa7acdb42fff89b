"""Batches of conformations of different sizes as one disjoint graph, built by vectorised gathers.

`GraphData` holds a whole data set as tensors on the training device (atoms, pairs, labels);
`GraphData.batch(ids)` gathers any set of conformations into a `Batch` with no Python loop
over conformations, so batching costs microseconds per batch even for large data sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch

from .dataset import AtomsData
from .neighbors import Pairs, neighbor_pairs
from .references import element_index


@dataclass
class Batch:
    """A disjoint union of conformations.

    species:       (A,) model species index per atom.
    positions:     (A, 3) Å.
    receivers, senders: (P,) atom indices into the batch.
    shifts:        (P, 3) Å added to sender positions (periodic images) or None.
    conformation:  (A,) index of each atom's conformation within the batch.
    n_conformations: number of conformations.
    targets:       named labels: `energy` (B,), `forces` (A, 3), `atom_energy` (A,), ...;
                   a NaN entry means "no label here".
    ids:           (B,) conformation indices in the data set.
    complete:      names of the targets known to have no NaN entry in this batch (the loss
                   then need not look; a target not named may still be complete).
    """

    species: torch.Tensor
    positions: torch.Tensor
    receivers: torch.Tensor
    senders: torch.Tensor
    shifts: Optional[torch.Tensor]
    conformation: torch.Tensor
    n_conformations: int
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: Optional[torch.Tensor] = None
    complete: frozenset[str] = frozenset()

    @property
    def n_atoms(self) -> torch.Tensor:
        return torch.bincount(self.conformation, minlength=self.n_conformations)


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(start, start + count) for each pair, vectorised."""
    total = int(counts.sum())
    block_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
    return torch.repeat_interleave(starts, counts, output_size=total) + torch.arange(
        total, device=starts.device) - block_start


class GraphData:
    """A data set as tensors, ready to be batched.

    atom_labels / conformation_labels: extra targets (e.g. teacher forces) as numpy arrays
    aligned with the data's atoms / conformations.
    """

    def __init__(
        self,
        data: AtomsData,
        elements: list[int],
        cutoff: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        pairs: Pairs | None = None,
        atom_labels: dict[str, np.ndarray] | None = None,
        conformation_labels: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.data = data
        self.dtype, self.device = dtype, torch.device(device)
        pairs = pairs if pairs is not None else neighbor_pairs(data, cutoff)

        def t(array: np.ndarray, dt: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dt, device=self.device)

        self.species = t(element_index(data.species, elements, data.source), torch.long)
        self.positions = t(data.positions, dtype)
        self.n_atoms = t(data.n_atoms, torch.long)
        self.atom_offsets = t(data.offsets[:-1], torch.long)
        self.n_pairs = t(pairs.n_pairs, torch.long)
        self.pair_offsets = t(pairs.offsets[:-1], torch.long)
        self.pair_receiver = t(pairs.receiver, torch.long)
        self.pair_sender = t(pairs.sender, torch.long)
        self.pair_shift = None if pairs.shift is None else t(pairs.shift, dtype)
        self.conformation_targets = {"energy": t(data.energy, dtype)}
        self.atom_targets: dict[str, torch.Tensor] = {}
        if data.forces is not None:
            self.atom_targets["forces"] = t(data.forces, dtype)
        for name, values in (atom_labels or {}).items():
            self.atom_targets[name] = t(values, dtype)
        for name, values in (conformation_labels or {}).items():
            self.conformation_targets[name] = t(values, dtype)
        # a target finite everywhere is finite in every batch: the loss then skips its checks
        self.complete = frozenset(name for name, v in {**self.conformation_targets, **self.atom_targets}.items()
                                  if bool(torch.isfinite(v).all()))

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    def batch(self, ids: torch.Tensor | np.ndarray) -> Batch:
        """Gather conformations `ids` into one disjoint graph."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        # index_select gathers rows faster than [ ] (the general indexing path): ~15 per batch
        counts = self.n_atoms.index_select(0, ids)
        atoms = _ranges(self.atom_offsets.index_select(0, ids), counts)
        batch_start = torch.cumsum(counts, 0) - counts
        pair_counts = self.n_pairs.index_select(0, ids)
        pairs = _ranges(self.pair_offsets.index_select(0, ids), pair_counts)
        pair_shift_to_batch = torch.repeat_interleave(batch_start, pair_counts, output_size=pairs.shape[0])
        conformation = torch.repeat_interleave(torch.arange(len(ids), device=self.device), counts,
                                               output_size=atoms.shape[0])
        targets = {k: v.index_select(0, ids) for k, v in self.conformation_targets.items()}
        targets.update({k: v.index_select(0, atoms) for k, v in self.atom_targets.items()})
        return Batch(
            species=self.species.index_select(0, atoms),
            positions=self.positions.index_select(0, atoms),
            receivers=self.pair_receiver.index_select(0, pairs) + pair_shift_to_batch,
            senders=self.pair_sender.index_select(0, pairs) + pair_shift_to_batch,
            shifts=None if self.pair_shift is None else self.pair_shift.index_select(0, pairs),
            conformation=conformation,
            n_conformations=len(ids),
            targets=targets,
            ids=ids,
            complete=self.complete,
        )

    def batches(self, ids: np.ndarray, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches over `ids`, in order or shuffled with `generator`."""
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        if shuffle:
            ids_t = ids_t[torch.randperm(len(ids_t), generator=generator)]
        for start in range(0, len(ids_t), batch_size):
            yield self.batch(ids_t[start:start + batch_size])
