"""Sharded reading of ANI-style HDF5 files: each process holds only its own conformations.

`HDF5Source` indexes a file (ANI-1 or ANI-1x / ANI-1ccx layout) without reading positions:
per conformation it keeps the size, the raw energy and the group, in the same global order
as `read_data` (groups in file order, conformations in order, NaN energies skipped), so a
conformation has the same index whether a run reads the file whole or in shards. The index
costs about 32 bytes per conformation; positions and forces are read only for the ranges
asked for, with `read(start, stop)`, so no process loads the whole file.

`Holding` says which conformations a process holds; `balanced_ranges` cuts the data into
contiguous ranges with about equal numbers of atoms, one per process.

examples/bench/sharded_data.py measures this data path (docs/distributed.md).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import h5py
import numpy as np

from ..errors import DataError
from .dataset import AtomsData
from .neighbors import Pairs, neighbor_pairs
from .readers import (DataSpec, ReadReport, _conformation_groups, _convert_units, _formula,
                      _format_from_suffix, _group_species, ani_energy_key)
from .units import energy_factor, length_factor

_ROWS_PER_READ = 65_536  # conformations per HDF5 read when streaming (bounds memory)


@dataclass(frozen=True)
class Holding:
    """Conformations [start, stop) of `total` held by this process (its shard)."""

    start: int
    stop: int
    total: int

    @property
    def full(self) -> bool:
        return self.start == 0 and self.stop == self.total

    def __len__(self) -> int:
        return self.stop - self.start


def balanced_ranges(n_atoms: np.ndarray, parts: int) -> List[tuple[int, int]]:
    """`parts` contiguous conformation ranges covering everything with about equal atom counts."""
    cumulative = np.concatenate([[0], np.cumsum(np.asarray(n_atoms, dtype=np.int64))])
    targets = cumulative[-1] * np.arange(parts + 1) / parts
    cuts = np.clip(np.searchsorted(cumulative, targets, side="left"), 1, len(cumulative) - 1)
    cuts = np.where(targets - cumulative[cuts - 1] < cumulative[cuts] - targets, cuts - 1, cuts)  # the nearest cut
    cuts[0], cuts[-1] = 0, len(n_atoms)
    cuts = np.maximum.accumulate(cuts)
    return [(int(cuts[k]), int(cuts[k + 1])) for k in range(parts)]


def neighbor_pairs_in_chunks(data: AtomsData, cutoff: float, chunk: int = 50_000) -> Pairs:
    """`neighbor_pairs(data, cutoff)`, identical, computed `chunk` conformations at a time: the
    temporary arrays of the search then scale with the chunk, not with the data (at 10⁶ small
    molecules the whole-data search peaks at about 3× the memory of its result)."""
    if len(data) <= chunk:
        return neighbor_pairs(data, cutoff)
    parts = [neighbor_pairs(data.subset(np.arange(start, min(start + chunk, len(data)))), cutoff)
             for start in range(0, len(data), chunk)]
    with_shift = any(p.shift is not None for p in parts)
    return Pairs(receiver=np.concatenate([p.receiver for p in parts]),
                 sender=np.concatenate([p.sender for p in parts]),
                 n_pairs=np.concatenate([p.n_pairs for p in parts]),
                 shift=np.concatenate([p.shift if p.shift is not None else np.zeros((len(p.receiver), 3))
                                       for p in parts]) if with_shift else None)


def is_hdf5(spec: DataSpec) -> bool:
    """True when `spec` is read by the ANI HDF5 reader (the only one that can shard)."""
    fmt = spec.format if spec.format != "auto" else _format_from_suffix(Path(spec.path))
    return fmt == "ani"


@dataclass
class _Group:
    path: str            # HDF5 path of the group
    species: np.ndarray  # (n,) atomic numbers
    rows: np.ndarray     # file rows kept (finite energy), ascending
    first: int           # global index of the first kept conformation


class HDF5Source:
    """Index of an ANI-style HDF5 file; reads conformation ranges on demand (eV, Å)."""

    def __init__(self, spec: DataSpec, report: Optional[ReadReport] = None) -> None:
        self.spec, self.path = spec, Path(spec.path)
        if not self.path.exists():
            raise DataError(f"data file not found: {self.path}")
        if spec.forces_sign not in (1.0, -1.0, 1, -1):
            raise DataError(f"{self.path}: forces_sign must be +1 or -1, got {spec.forces_sign}")
        report = report if report is not None else ReadReport()
        self.groups: List[_Group] = []
        self.group_names: List[str] = []
        sizes, energies, group_of = [], [], []
        with self._open() as h5:
            found = _conformation_groups(h5)
            if not found:
                raise DataError(f"{self.path}: no group with a 'coordinates' dataset (not an ANI-style file)")
            first = 0
            for group in found:
                species, raw_energy, rows = self._index_group(group, report)
                if rows.size == 0:
                    continue
                self.groups.append(_Group(group.name, species, rows, first))
                sizes.append(np.full(rows.size, species.size, dtype=np.int64))
                energies.append(raw_energy[rows])
                group_of.append(np.full(rows.size, len(self.group_names), dtype=np.int64))
                self.group_names.append(str(group.attrs.get("name", _formula(species))))
                first += rows.size
        if not self.groups:
            raise DataError(f"{self.path}: every energy under {spec.energy_key or 'energies'!r} is NaN "
                            f"({report.skipped_nan_energy} skipped); no conformations left")
        self.n_atoms = np.concatenate(sizes)
        self.raw_energy = np.concatenate(energies)
        self.group = np.concatenate(group_of)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])
        self._firsts = np.array([g.first for g in self.groups])
        self.elements = sorted({int(z) for g in self.groups for z in g.species})
        self.source = str(self.path)
        self._has_forces: Optional[np.ndarray] = None

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file ({err})") from None

    def _index_group(self, group: h5py.Group, report: ReadReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Species, raw energies and kept rows of one group, checked as `read_data` checks them."""
        where = f"{self.path}:{group.name}"
        species = _group_species(group, where)
        shape = group["coordinates"].shape
        if len(shape) != 3 or shape[1:] != (species.size, 3):
            raise DataError(f"{where}/coordinates has shape {shape}, expected (n, {species.size}, 3) "
                            f"for {species.size} species")
        energy_key = ani_energy_key(group, self.spec, where)
        energy = np.asarray(group[energy_key][()], dtype=np.float64).reshape(-1)
        if energy.shape[0] != shape[0]:
            raise DataError(f"{where}/{energy_key} has {energy.shape[0]} values for {shape[0]} conformations")
        if self.spec.forces_key:
            if self.spec.forces_key not in group:
                raise DataError(f"{where}: no dataset {self.spec.forces_key!r}")
            if group[self.spec.forces_key].shape != shape:
                raise DataError(f"{where}/{self.spec.forces_key} has shape {group[self.spec.forces_key].shape}, "
                                f"expected {shape}")
        keep = np.isfinite(energy)
        report.skipped_nan_energy += int((~keep).sum())
        return species, energy, np.flatnonzero(keep)

    # ---- the index ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_total_atoms(self) -> int:
        return int(self.offsets[-1])

    @property
    def energy(self) -> np.ndarray:
        """(C,) energies in eV (the same values `read_data` gives)."""
        return self.raw_energy * energy_factor(self.spec.energy_unit or "Hartree", f"{self.source}: ")

    @property
    def has_forces(self) -> np.ndarray:
        """(C,) True where every force component is finite; streams the forces once (bounded memory)."""
        if self._has_forces is None:
            flags = np.zeros(len(self), dtype=bool)
            if self.spec.forces_key:
                with self._open() as h5:
                    for g in self.groups:
                        for lo, hi, rows in self._row_blocks(g, 0, g.rows.size):
                            block = h5[g.path][self.spec.forces_key][rows[0]:rows[-1] + 1][rows - rows[0]]
                            flags[g.first + lo:g.first + hi] = np.isfinite(block).all(axis=(1, 2))
            self._has_forces = flags
        return self._has_forces

    def composition(self, ids: np.ndarray, elements: List[int]) -> np.ndarray:
        """(len(ids), n_elements) atom counts of each element, from the index alone."""
        per_group = np.zeros((len(self.groups), len(elements)))
        lookup = {z: k for k, z in enumerate(elements)}
        for i, g in enumerate(self.groups):
            for z in g.species:
                per_group[i, lookup[int(z)]] += 1
        return per_group[self.group[np.asarray(ids, dtype=np.int64)]]

    def fit_reference_energies(self, ids: np.ndarray, elements: List[int]) -> np.ndarray:
        """The least-squares fit of `ekd.data.fit_reference_energies` on conformations `ids`,
        from the index (no positions read); the same numbers the in-memory fit gives."""
        counts = self.composition(ids, elements)
        solution, _, rank, _ = np.linalg.lstsq(counts, self.energy[ids], rcond=None)
        if rank < len(elements):
            warnings.warn(f"{self.source}: only {rank} independent compositions for {len(elements)} elements; "
                          "per-element reference energies are underdetermined (minimum-norm solution used). "
                          "Set [references] values in the config to fix them, e.g. from isolated-atom energies.",
                          stacklevel=2)
        return solution

    def describe(self) -> str:
        from ase.data import chemical_symbols

        return (f"{self.path.name}: {len(self)} conformations, {self.n_total_atoms} atoms, "
                f"{len(self.group_names)} molecules/formulas, elements "
                f"{' '.join(chemical_symbols[z] for z in self.elements)} (read in shards)")

    # ---- reading ------------------------------------------------------------------------------
    def _row_blocks(self, g: _Group, lo: int, hi: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Kept conformations lo..hi of group g in pieces of at most _ROWS_PER_READ: (lo, hi, file rows)."""
        for start in range(lo, hi, _ROWS_PER_READ):
            stop = min(start + _ROWS_PER_READ, hi)
            yield start, stop, g.rows[start:stop]

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[_Group, int, int]]:
        """(group, first, last) local kept-conformation ranges covering global [start, stop)."""
        k = int(np.searchsorted(self._firsts, start, side="right")) - 1
        while start < stop and k < len(self.groups):
            g = self.groups[k]
            lo, hi = start - g.first, min(stop - g.first, g.rows.size)
            if hi > lo:
                yield g, lo, hi
            start = g.first + g.rows.size
            k += 1

    def read(self, start: int, stop: int) -> AtomsData:
        """Conformations [start, stop) as AtomsData in eV and Å, identical to the same rows of
        `read_data(spec)`; only those rows are read from the file."""
        if not 0 <= start <= stop <= len(self):
            raise DataError(f"{self.source}: conformations {start}..{stop} out of range (0..{len(self)})")
        species, positions, forces = [], [], []
        with self._open() as h5:
            for g, lo, hi in self._pieces(start, stop):
                for _, _, rows in self._row_blocks(g, lo, hi):
                    first = int(rows[0])
                    coords = h5[g.path]["coordinates"][first:int(rows[-1]) + 1][rows - first]
                    positions.append(np.asarray(coords, dtype=np.float64).reshape(-1, 3))
                    species.append(np.tile(g.species, rows.size))
                    if self.spec.forces_key:
                        block = h5[g.path][self.spec.forces_key][first:int(rows[-1]) + 1][rows - first]
                        forces.append(np.asarray(block, dtype=np.float64).reshape(-1, 3))
        empty = np.zeros((0, 3))
        data = AtomsData(
            species=np.concatenate(species) if species else np.zeros(0, dtype=np.int64),
            positions=np.concatenate(positions) if positions else empty,
            n_atoms=self.n_atoms[start:stop], energy=self.raw_energy[start:stop],
            forces=(np.concatenate(forces) if forces else empty) if self.spec.forces_key else None,
            group=self.group[start:stop], group_names=list(self.group_names),
            source=f"{self.source} [{start}:{stop}]")
        data = _convert_units(data, self.spec, default_energy="Hartree")
        return data.validate() if len(data) else data

    def read_all(self) -> AtomsData:
        data = self.read(0, len(self))
        data.source = self.source
        return data

    def fingerprint(self) -> str:
        """`ekd.distill.data_fingerprint` of the whole data, streamed (bounded memory)."""
        digest = hashlib.sha256()
        for g in self.groups:
            for _, _, rows in self._row_blocks(g, 0, g.rows.size):
                digest.update(np.tile(np.asarray(g.species, dtype=np.int64), rows.size).tobytes())
        length = length_factor(self.spec.length_unit or "Angstrom", f"{self.source}: ")
        with self._open() as h5:
            for g in self.groups:
                for _, _, rows in self._row_blocks(g, 0, g.rows.size):
                    first = int(rows[0])
                    coords = h5[g.path]["coordinates"][first:int(rows[-1]) + 1][rows - first]
                    block = np.ascontiguousarray(np.asarray(coords, dtype=np.float64).reshape(-1, 3) * length)
                    digest.update(block.tobytes())
        return digest.hexdigest()[:32]
