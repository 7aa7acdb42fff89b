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
conformations in the attribute `done` (moved only after the batch's rows reached the file); a
killed run resumes from there, and only a complete file is renamed to `labels.h5`. A partial
file whose teachers or data differ is discarded. The file's whole space is claimed on disk when
it is created, so a disk (or file-size limit) too small for the labels stops the stage before
the teachers run, with WriteError naming the file, not hours into labelling.

Under torchrun each rank labels a contiguous block of conformations into its own file
(`labels.h5.part-<start>-<stop>`, written as `.partial` with the same `done` counter), and
rank 0 merges the complete blocks into `labels.h5` (atomically, by rename); the block files
are removed only after the merge, so a killed run resumes from whatever blocks survived.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..data import AtomsData, GraphData
from ..errors import DataError
from ..fileio import (close_quietly, closed_after, failed_write, kept_for_resume, move, replacing, reserve_space,
                      write_error)
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

    def check(self, path: Path) -> "Labels":
        """Refuse arrays of inconsistent shapes or with non-finite values (a damaged file)."""
        n_atoms, n_conf = len(self.atom_energy_mean), len(self.energy_mean)
        shapes = {"forces_mean": (n_atoms, 3), "forces_std": (n_atoms,), "atom_energy_mean": (n_atoms,),
                  "energy_mean": (n_conf,), "energy_std": (n_conf,)}
        for name, shape in shapes.items():
            values = getattr(self, name)
            if values.shape != shape or values.dtype.kind != "f":
                raise DataError(f"{path}: {name} has shape {values.shape} and type {values.dtype}, expected "
                                f"{shape} floats; delete the file and run the 'label' stage again")
            if not np.isfinite(values).all():
                raise DataError(f"{path}: {name} holds non-finite values; delete the file and run the 'label' "
                                "stage again")
        return self


def data_fingerprint(graph: GraphData | AtomsData, atoms: Optional[slice] = None) -> str:
    """Hash of species and positions: labels belong to exactly these conformations
    (all atoms of the graph's data, or the atoms `atoms` of it)."""
    data = graph.data if isinstance(graph, GraphData) else graph
    species, positions = data.species, data.positions
    if atoms is not None:
        species, positions = species[atoms], positions[atoms]
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(species).tobytes())
    digest.update(np.ascontiguousarray(positions).tobytes())
    return digest.hexdigest()[:32]


def _datasets(n_conf: int, n_atoms: int, m: int) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(name, shape, dtype) of every dataset of a labels file."""
    return [("energy_members", (n_conf, m), "f8"), ("energy_mean", (n_conf,), "f8"),
            ("energy_std", (n_conf,), "f8"), ("forces_members", (m, n_atoms, 3), "f4"),
            ("forces_mean", (n_atoms, 3), "f8"), ("forces_std", (n_atoms,), "f8"),
            ("atom_energy_members", (m, n_atoms), "f4"), ("atom_energy_mean", (n_atoms,), "f8")]


def _create(path: Path, n_conf: int, n_atoms: int, names: List[str], hashes: List[str], fingerprint: str,
            source: str) -> h5py.File:
    """A new labels file with every dataset's space claimed on disk now (see the module docstring);
    if the space is not there, the file is removed and WriteError says how much is needed."""
    datasets = _datasets(n_conf, n_atoms, len(names))
    needed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in datasets)
    try:
        h5 = h5py.File(path, "w")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        h5.attrs.update({"format": LABELS_FORMAT, "version": LABELS_VERSION, "teachers": names,
                         "teacher_sha256": hashes, "data_source": source, "data_fingerprint": fingerprint,
                         "n_conformations": n_conf, "n_atoms": n_atoms, "energy_unit": "eV",
                         "length_unit": "Angstrom", "done": 0, "complete": False,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        for name, shape, dtype in datasets:
            h5.create_dataset(name, shape, dtype=dtype, dcpl=_allocated_at_creation())
        h5.flush()  # HDF5 lengthens the file to hold every dataset (a sparse file)
        reserve_space(path)  # and the disk's blocks behind it
    except BaseException as err:
        close_quietly(h5)
        path.unlink(missing_ok=True)
        if failed_write(err):
            size = f"{needed / 1e6:,.1f} MB" if needed >= 100_000 else f"{needed:,} bytes"
            raise write_error(path, err, f"it needs about {size} and was removed") from None
        raise
    return h5


def _allocated_at_creation() -> h5py.h5p.PropDCID:
    """Dataset creation properties that allocate the dataset's space in the file when it is created
    (HDF5's default waits for the first write, so the file would grow while labelling)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


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
    with kept_for_resume(h5, partial, "what was labelled before"):
        _label_rows(h5, teachers, graph, 0, len(data), batch_size, progress)
    move(partial, path)
    return path


def _label_rows(h5: h5py.File, teachers: List[Potential], graph: GraphData, first: int, count: int,
                batch_size: int, progress: bool) -> None:
    """Label conformations first .. first+count of `graph` into rows 0 .. count of `h5`, from
    its `done` counter on, flushing after every batch; then mark the file complete."""
    offsets = graph.data.offsets
    base = int(offsets[first])
    done = int(h5.attrs["done"])
    bar = Progress(count, "labels", unit="conf", enabled=progress, initial=done)
    for start in range(done, count, batch_size):
        stop = min(start + batch_size, count)
        _label_chunk(h5, teachers, graph, np.arange(first + start, first + stop), start,
                     int(offsets[first + start]) - base, int(offsets[first + stop]) - base)
        h5.flush()  # the rows first: a flush that fails half way must not leave `done` counting them
        h5.attrs.modify("done", stop)
        h5.flush()
        bar.update(stop - start)
    bar.close()
    h5.attrs["complete"] = True


def _label_chunk(h5: h5py.File, teachers: List[Potential], graph: GraphData, ids: np.ndarray, row: int,
                 a0: int, a1: int) -> None:
    """Labels of conformations `ids` of `graph` into rows row.. and atom rows a0..a1 of `h5`."""
    labels = ensemble_labels(teachers, graph, ids)
    rows = slice(row, row + len(ids))
    for name in CONFORMATION_LABELS:
        h5[name][rows] = labels[name]
    for name in ATOM_LABELS:
        h5[name][a0:a1] = labels[name]
    for name in MEMBER_LABELS:
        h5[name][:, a0:a1] = labels[name]


CONFORMATION_LABELS = ("energy_members", "energy_mean", "energy_std")
ATOM_LABELS = ("forces_mean", "forces_std", "atom_energy_mean")
MEMBER_LABELS = ("forces_members", "atom_energy_members")


def ensemble_labels(teachers: List[Potential], graph: GraphData, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every label of conformations `ids` of `graph` (the datasets of a labels file, by name),
    refusing non-finite predictions."""
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
    return {"energy_members": energies, "energy_mean": energies.mean(axis=1), "energy_std": energies.std(axis=1),
            "forces_members": forces, "forces_mean": forces.mean(axis=0), "forces_std": member_force_deviation(forces),
            "atom_energy_members": atom_energies, "atom_energy_mean": atom_energies.mean(axis=0)}


def member_force_deviation(member_forces: np.ndarray) -> np.ndarray:
    """Per-atom deviation sqrt(mean_k |F_k − mean F|²) of (M, A, 3) member forces: an ensemble's
    force uncertainty (`forces_std` of a labels file), as the ASE calculator and the pair style give it."""
    deviation = member_forces - member_forces.mean(axis=0)
    return np.sqrt(np.mean(np.sum(deviation ** 2, axis=-1), axis=0))


# ---- one block per rank, merged by rank 0 (torchrun) ------------------------------------------

def block_path(path: Path, start: int, stop: int) -> Path:
    """The file of the block of conformations [start, stop) of labels file `path`."""
    return Path(path).with_name(f"{Path(path).name}.part-{start}-{stop}")


def interrupted_label_files(path: Path) -> List[Path]:
    """Partial labels and block files an interrupted labelling left beside `path`."""
    path = Path(path)
    return sorted(path.parent.glob(path.name + ".part-*")) + [p for p in [path.with_name(path.name + ".partial")]
                                                               if p.exists()]


def write_label_block(teachers: List[Potential], names: List[str], hashes: List[str], graph: GraphData,
                      path: Path, start: int, stop: int, first: int, batch_size: int = 256, resume: bool = True,
                      progress: bool = True) -> Path:
    """Label conformations [start, stop) of the data set, which are conformations first ..
    first + (stop - start) of `graph`, into their block file (resumable like `write_labels`)."""
    block = block_path(path, start, stop)
    offsets = graph.data.offsets
    atoms = slice(int(offsets[first]), int(offsets[first + stop - start]))
    fingerprint = data_fingerprint(graph, atoms)
    if block.exists():
        done = _open_partial(block, hashes, fingerprint)  # removed when it is of other teachers / data
        if done is not None:
            with done:
                if done.attrs.get("complete", False):
                    return block
            block.unlink()
    partial = block.with_name(block.name + ".partial")
    h5 = _open_partial(partial, hashes, fingerprint) if (resume and partial.exists()) else None
    if h5 is None:
        h5 = _create(partial, stop - start, atoms.stop - atoms.start, names, hashes, fingerprint,
                     f"{graph.data.source} [{start}:{stop}]")
    with kept_for_resume(h5, partial, "what was labelled before"):
        _label_rows(h5, teachers, graph, first, stop - start, batch_size, progress)
    move(partial, block)
    return block


def merge_label_blocks(path: Path, blocks: Sequence[Tuple[int, int, int]], names: List[str], hashes: List[str],
                       fingerprint: str, source: str, n_conformations: int, n_atoms: int,
                       rows_per_copy: int = 1 << 18) -> Path:
    """Join the complete block files (start, stop, first atom) into `path`, written under a
    temporary name and renamed; the block files are removed afterwards (and kept when the merge
    fails). Memory is bounded by `rows_per_copy` rows."""
    path = Path(path)
    with replacing(path, path.with_name(path.name + ".merging")) as merging:
        h5 = _create(merging, n_conformations, n_atoms, names, hashes, fingerprint, source)
        with closed_after(h5):
            for start, stop, a0 in blocks:
                _copy_block(h5, block_path(path, start, stop), start, stop, a0, hashes, rows_per_copy)
            h5.attrs["done"] = n_conformations
            h5.attrs["complete"] = True
    for leftover in interrupted_label_files(path):
        leftover.unlink()
    return path


def _copy_block(h5: h5py.File, block: Path, start: int, stop: int, a0: int, hashes: List[str],
                rows_per_copy: int) -> None:
    """The rows of the complete block file of conformations [start, stop), whose atoms begin at a0."""
    try:
        part = h5py.File(block, "r")
    except OSError as err:
        raise DataError(f"{block}: label block missing or unreadable ({err})") from None
    with part:
        if not part.attrs.get("complete", False) or [str(h) for h in part.attrs["teacher_sha256"]] != hashes:
            raise DataError(f"{block}: not a complete label block of these teachers")
        for name in CONFORMATION_LABELS:
            for r in range(0, stop - start, rows_per_copy):
                rows = slice(r, min(r + rows_per_copy, stop - start))
                h5[name][start + rows.start:start + rows.stop] = part[name][rows]
        n = part["forces_mean"].shape[0]
        for r in range(0, n, rows_per_copy):
            rows = slice(r, min(r + rows_per_copy, n))
            target = slice(a0 + rows.start, a0 + rows.stop)
            for name in ATOM_LABELS:
                h5[name][target] = part[name][rows]
            for name in MEMBER_LABELS:
                h5[name][:, target] = part[name][:, rows]


def check_labels(path: Path, hashes: List[str], fingerprint: Optional[str] = None) -> None:
    """Refuse a labels file that is incomplete or belongs to other teachers or data."""
    read_labels(path, hashes=hashes, fingerprint=fingerprint, part=(slice(0, 0), slice(0, 0)))


def read_labels(path: Path, graph: GraphData | None = None, hashes: List[str] | None = None,
                fingerprint: Optional[str] = None, part: Optional[Tuple[slice, slice]] = None) -> Labels:
    """Read a complete labels file; check it matches the data and teachers when given.

    fingerprint: the data fingerprint to expect (instead of computing it from `graph`);
    part: (conformations, atoms) slices to read instead of everything (a rank's shard)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"labels file not found: {path} (run the 'label' stage first)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    try:
        with h5:
            labels = _labels_of(h5, path, hashes, graph, fingerprint, part)
    except DataError:
        raise
    except Exception as err:  # h5py and numpy raise many types on a damaged file
        raise DataError(f"{path}: a damaged labels file ({type(err).__name__}: {str(err)[:200]}); delete it and "
                        "run the 'label' stage again") from None
    return labels.check(path)


def _labels_of(h5: h5py.File, path: Path, hashes: List[str] | None, graph: GraphData | None,
           fingerprint: Optional[str], part: Optional[Tuple[slice, slice]]) -> Labels:
    if h5.attrs.get("format") != LABELS_FORMAT or not h5.attrs.get("complete", False):
        raise DataError(f"{path}: not a complete ekd labels file")
    file_hashes = [str(h) for h in h5.attrs["teacher_sha256"]]
    if hashes is not None and file_hashes != list(hashes):
        raise DataError(f"{path}: labels were made by other teachers than the run's; delete the file "
                        "and run the 'label' stage again")
    if fingerprint is None and graph is not None:
        fingerprint = data_fingerprint(graph)
    if fingerprint is not None and h5.attrs.get("data_fingerprint") != fingerprint:
        raise DataError(f"{path}: labels were made for other data (fingerprint differs)")
    conformations, atoms = part if part is not None else (slice(None), slice(None))
    return Labels(forces_mean=h5["forces_mean"][atoms], forces_std=h5["forces_std"][atoms],
                  atom_energy_mean=h5["atom_energy_mean"][atoms], energy_mean=h5["energy_mean"][conformations],
                  energy_std=h5["energy_std"][conformations], teacher_sha256=file_hashes)
