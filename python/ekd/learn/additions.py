"""The files active learning writes: the frames it sampled, the candidates it sent to the oracle,
and the conformations the oracle labelled (the additions a round's data grows by).

`additions.h5` is in the ANI-1x layout ekd reads (`[data] additions`, read with
`ekd.data.readers.ADDITIONS_KEYS`), one group per molecule or cluster and atom order, with the
provenance of every conformation beside its labels:

    <group>/atomic_numbers (atoms,), coordinates (n, atoms, 3) Å, energy (n,) eV,
            forces (n, atoms, 3) eV/Å (NaN where the oracle gives none),
            round, candidate, trajectory, step (n,), temperature (n,) K,
            committee_deviation (n,) eV/Å, reason (n,) index into attrs reasons,
            sources (n, k) the data conformations the start was made of (−1 padded)
            attrs: name (molecule or cluster)
    attrs: format, version, round, oracle, level, program, reasons, created, energy_unit, length_unit

Every file is built in memory and written whole to a temporary name, then renamed into place
(`fileio.atomic_hdf5`: a write that fails, disk full, leaves the previous file and raises
WriteError naming it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

import h5py
import numpy as np

from ..data import AtomsData
from ..errors import DataError
from ..fileio import atomic_hdf5

ADDITIONS_FORMAT = "ekd-additions"
ADDITIONS_VERSION = 1


def write_arrays(path: Path, arrays: Dict[str, np.ndarray], attrs: Dict[str, object]) -> None:
    """An HDF5 file of flat arrays and attributes, written atomically."""
    path = Path(path)
    with atomic_hdf5(path) as h5:
        for key, value in arrays.items():
            if value.dtype.kind in "UO":
                h5.create_dataset(key, data=np.asarray(value, dtype=object), dtype=h5py.string_dtype())
            else:
                h5.create_dataset(key, data=value)
        h5.attrs.update(attrs)


def read_arrays(path: Path, keys: List[str]) -> tuple[Dict[str, np.ndarray], Dict[str, object]]:
    """The arrays `keys` and the attributes of a file `write_arrays` wrote."""
    try:
        with h5py.File(path, "r") as h5:
            arrays = {}
            for key in keys:
                value = h5[key]
                arrays[key] = value.asstr()[()] if h5py.check_string_dtype(value.dtype) else value[()]
            return arrays, dict(h5.attrs)
    except (OSError, KeyError) as err:
        raise DataError(f"{path}: not a complete ekd learning file ({err}); delete it to make it again") from None


def atoms_arrays(data: AtomsData) -> Dict[str, np.ndarray]:
    return {"species": data.species, "positions": data.positions, "n_atoms": data.n_atoms, "group": data.group}


def atoms_from_arrays(arrays: Dict[str, np.ndarray], group_names: List[str], source: str) -> AtomsData:
    n = arrays["n_atoms"]
    return AtomsData(species=arrays["species"], positions=arrays["positions"], n_atoms=n, energy=np.full(len(n), np.nan),
                     group=arrays["group"], group_names=list(group_names), source=source)


def write_additions(path: Path, data: AtomsData, energy: np.ndarray, forces: np.ndarray,
                    provenance: Dict[str, np.ndarray], attrs: Dict[str, object]) -> None:
    """The labelled conformations in the ANI-1x layout, grouped by molecule and atom order."""
    path = Path(path)
    offsets = data.offsets
    keys: Dict[tuple, List[int]] = {}
    for c in range(len(data)):
        species = tuple(int(z) for z in data.species[offsets[c]:offsets[c + 1]])
        keys.setdefault((data.group_names[data.group[c]], species), []).append(c)
    with atomic_hdf5(path) as h5:
        used: Dict[str, int] = {}
        for (name, species), rows in keys.items():
            used[name] = used.get(name, 0) + 1
            label = name.replace("/", "_") + ("" if used[name] == 1 else f"#{used[name]}")
            group = h5.create_group(label)
            group.attrs["name"] = name
            atoms = data.atom_indices(np.array(rows))
            shape = (len(rows), len(species), 3)
            group.create_dataset("atomic_numbers", data=np.array(species, dtype=np.int64))
            group.create_dataset("coordinates", data=data.positions[atoms].reshape(shape))
            group.create_dataset("energy", data=energy[rows])
            group.create_dataset("forces", data=forces[atoms].reshape(shape))
            for key, value in provenance.items():
                group.create_dataset(key, data=value[rows])
        h5.attrs.update({"format": ADDITIONS_FORMAT, "version": ADDITIONS_VERSION, "energy_unit": "eV",
                         "length_unit": "Angstrom", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **attrs})


def count_additions(path: Path) -> int:
    """Conformations in an additions file."""
    with h5py.File(path, "r") as h5:
        if h5.attrs.get("format") != ADDITIONS_FORMAT:
            raise DataError(f"{path}: not an ekd additions file")
        return sum(h5[g]["energy"].shape[0] for g in h5)
