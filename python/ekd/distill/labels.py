"""The teachers label every conformation: forces (−dE/dR) of each teacher, their ensemble mean
and per-atom spread, and ensemble-mean atomic energies, written to one HDF5 file.

Layout of `labels.h5` (A atoms, C conformations, M teachers, in the data set's order; eV, Å):

    energy_members      (C, M)  float64   each teacher's total energy
    energy_mean         (C,)    float64
    energy_std          (C,)    float64   spread over teachers
    forces_members      (M, A, 3) float32 each teacher's forces
    forces_mean         (A, 3)  float64   the student's force labels
    forces_std          (A,)    float64   sqrt(mean_m |F_m − F_mean|²), per atom
    atom_energy_members (M, A)  float32
    atom_energy_mean    (A,)    float64   the student's optional atomic-energy labels
    attrs: format, version, teachers (names), teacher_sha256 (checkpoint hashes), data_source,
           data_fingerprint, n_conformations, n_atoms, energy_unit, length_unit, created, complete

The file is written as `labels.h5.partial` batch by batch, with the number of labelled
conformations in the attribute `done`; a killed run resumes from there, and only a complete
file is renamed to `labels.h5`. A partial file whose teachers or data differ is discarded.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import h5py
import numpy as np

from ..data import GraphData
from ..errors import DataError
from ..models import Potential
from ..training import predict_all
from ..training.progress import Progress

LABELS_FORMAT = "ekd-labels"
LABELS_VERSION = 1


@dataclass
class Labels:
    """The arrays of a labels file that training the student needs."""

    forces_mean: np.ndarray
    forces_std: np.ndarray
    atom_energy_mean: np.ndarray
    energy_mean: np.ndarray
    energy_std: np.ndarray
    teacher_sha256: List[str]


def data_fingerprint(graph: GraphData) -> str:
    """Hash of species and positions: labels belong to exactly these conformations."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(graph.data.species).tobytes())
    digest.update(np.ascontiguousarray(graph.data.positions).tobytes())
    return digest.hexdigest()[:32]


def _create(path: Path, n_conf: int, n_atoms: int, names: List[str], hashes: List[str], fingerprint: str,
            source: str) -> h5py.File:
    m = len(names)
    h5 = h5py.File(path, "w")
    h5.attrs.update({"format": LABELS_FORMAT, "version": LABELS_VERSION, "teachers": names,
                     "teacher_sha256": hashes, "data_source": source, "data_fingerprint": fingerprint,
                     "n_conformations": n_conf, "n_atoms": n_atoms, "energy_unit": "eV",
                     "length_unit": "Angstrom", "done": 0, "complete": False,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    h5.create_dataset("energy_members", (n_conf, m), dtype="f8")
    h5.create_dataset("energy_mean", (n_conf,), dtype="f8")
    h5.create_dataset("energy_std", (n_conf,), dtype="f8")
    h5.create_dataset("forces_members", (m, n_atoms, 3), dtype="f4")
    h5.create_dataset("forces_mean", (n_atoms, 3), dtype="f8")
    h5.create_dataset("forces_std", (n_atoms,), dtype="f8")
    h5.create_dataset("atom_energy_members", (m, n_atoms), dtype="f4")
    h5.create_dataset("atom_energy_mean", (n_atoms,), dtype="f8")
    return h5


def _open_partial(path: Path, hashes: List[str], fingerprint: str) -> h5py.File | None:
    """The partial file if it belongs to these teachers and data, else None (and it is removed)."""
    try:
        h5 = h5py.File(path, "r+")
    except OSError:
        path.unlink()
        return None
    same = (h5.attrs.get("format") == LABELS_FORMAT and list(h5.attrs.get("teacher_sha256", [])) == hashes
            and h5.attrs.get("data_fingerprint") == fingerprint)
    if not same:
        h5.close()
        path.unlink()
        return None
    return h5


def write_labels(teachers: List[Potential], names: List[str], hashes: List[str], graph: GraphData,
                 path: Path, batch_size: int = 256, resume: bool = True, progress: bool = True) -> Path:
    """Label every conformation of `graph` with the teachers' predictions; returns `path`."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    fingerprint = data_fingerprint(graph)
    data = graph.data
    h5 = _open_partial(partial, hashes, fingerprint) if (resume and partial.exists()) else None
    if h5 is None:
        h5 = _create(partial, len(data), data.n_total_atoms, names, hashes, fingerprint, data.source)
    offsets = data.offsets
    with h5:
        done = int(h5.attrs["done"])
        bar = Progress(len(data), "labels", unit="conf", enabled=progress, initial=done)
        for start in range(done, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            _label_chunk(h5, teachers, graph, np.arange(start, stop), int(offsets[start]), int(offsets[stop]))
            h5.attrs["done"] = stop
            h5.flush()
            bar.update(stop - start)
        bar.close()
        h5.attrs["complete"] = True
    os.replace(partial, path)
    return path


def _label_chunk(h5: h5py.File, teachers: List[Potential], graph: GraphData, ids: np.ndarray,
                 a0: int, a1: int) -> None:
    preds = [predict_all(t, graph, ids, batch_size=len(ids), forces=True) for t in teachers]
    for k, p in enumerate(preds):
        bad = np.flatnonzero(~np.isfinite(p.energy))
        if bad.size or not np.isfinite(p.forces).all():
            conf = int(ids[bad[0]]) if bad.size else int(ids[0])
            raise DataError(f"teacher {k} predicts a non-finite energy or force near conformation {conf} of "
                            f"{graph.data.source}; check that teacher's training (metrics.jsonl)")
    energies = np.stack([p.energy for p in preds], axis=1)                 # (B, M)
    forces = np.stack([p.forces for p in preds], axis=0)                   # (M, a, 3)
    atom_energies = np.stack([p.atom_energy for p in preds], axis=0)       # (M, a)
    mean_forces = forces.mean(axis=0)
    h5["energy_members"][ids[0]:ids[-1] + 1] = energies
    h5["energy_mean"][ids[0]:ids[-1] + 1] = energies.mean(axis=1)
    h5["energy_std"][ids[0]:ids[-1] + 1] = energies.std(axis=1)
    h5["forces_members"][:, a0:a1] = forces
    h5["forces_mean"][a0:a1] = mean_forces
    h5["forces_std"][a0:a1] = np.sqrt(np.mean(np.sum((forces - mean_forces) ** 2, axis=-1), axis=0))
    h5["atom_energy_members"][:, a0:a1] = atom_energies
    h5["atom_energy_mean"][a0:a1] = atom_energies.mean(axis=0)


def read_labels(path: Path, graph: GraphData | None = None, hashes: List[str] | None = None) -> Labels:
    """Read a complete labels file; check it matches the data and teachers when given."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"labels file not found: {path} (run the 'label' stage first)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with h5:
        if h5.attrs.get("format") != LABELS_FORMAT or not h5.attrs.get("complete", False):
            raise DataError(f"{path}: not a complete ekd labels file")
        file_hashes = [str(h) for h in h5.attrs["teacher_sha256"]]
        if hashes is not None and file_hashes != list(hashes):
            raise DataError(f"{path}: labels were made by other teachers than the run's; delete the file "
                            "and run the 'label' stage again")
        if graph is not None and h5.attrs.get("data_fingerprint") != data_fingerprint(graph):
            raise DataError(f"{path}: labels were made for other data (fingerprint differs)")
        return Labels(forces_mean=h5["forces_mean"][()], forces_std=h5["forces_std"][()],
                      atom_energy_mean=h5["atom_energy_mean"][()], energy_mean=h5["energy_mean"][()],
                      energy_std=h5["energy_std"][()], teacher_sha256=file_hashes)
