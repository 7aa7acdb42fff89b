"""Readers: every supported file layout becomes one `AtomsData` in eV and Å.

Supported layouts (`format`):
- `ani`:  HDF5 in the ANI-1 layout (`<group>/<molecule>/{coordinates, energies, species}`)
          or the ANI-1x / ANI-1ccx release layout (`<formula>/{atomic_numbers, coordinates,
          <method>.energy, <method>.forces}`); groups are found at any depth. Conformations
          whose energy is NaN (property not computed) are skipped and counted.
- `npz`:  sGDML-style numpy archives with `R` (n, atoms, 3), `z` (atoms,), `E` (n,) and
          optionally `F` (n, atoms, 3).
- `ase`:  anything `ase.io.read` reads (extended XYZ, ASE db, ...); energies and forces come
          from the frame's calculator or from `info[energy_key]` / `arrays[forces_key]`.
"""

from __future__ import annotations

import os
from typing import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from .dataset import AtomsData, concatenate
from .units import energy_factor, length_factor

FORMATS = ("auto", "ani", "npz", "ase")


@dataclass
class DataSpec:
    """Where the data are and how to read them (the `[data]` table of a run config).

    path:         the file.
    format:       auto | ani | npz | ase (auto: by file extension).
    energy_key:   name of the energy property ("" = the layout's default: `energies` for
                  ANI-1, `energy` for ASE/npz; ANI-1x files have several and need one named).
    forces_key:   name of the forces property ("" = none for HDF5, `forces` where present).
    energy_unit:  unit of the file's energies ("" = Hartree for HDF5, eV for ASE, npz: the
                  file's `e_unit` or kcal/mol); see `ekd.data.units`.
    length_unit:  unit of the file's positions ("" = Angstrom).
    forces_sign:  +1 when the file stores forces (-dE/dR), -1 when it stores gradients.
    additions:    further files in ekd's additions layout (conformations an oracle labelled for
                  `python -m ekd.learn`, see `ekd.learn.additions`), appended after `path`'s
                  conformations in the order given.
    added_weight: loss weight, in every model's training, of the conformations an active-learning
                  round added (round > 0: the `provenance.round` dataset of an HDF5 file, or an
                  additions file) relative to the original data's 1; not used in reading.
    """

    path: str
    format: str = "auto"
    energy_key: str = ""
    forces_key: str = ""
    energy_unit: str = ""
    length_unit: str = ""
    forces_sign: float = 1.0
    additions: list[str] = field(default_factory=list)
    added_weight: float = 1.0


# How every additions file is read: the ANI-1x layout in eV and eV/Å (ekd.learn.additions writes it).
ADDITIONS_KEYS = {"format": "ani", "energy_key": "energy", "forces_key": "forces", "energy_unit": "eV"}
# Where an ANI-layout group says which active-learning round added each conformation: data sets
# grown by ekd.learn (examples/learn/make_embedded_v2.py) and additions files.
ROUND_KEYS = ("provenance.round", "round")


@dataclass
class ReadReport:
    """What reading skipped, so the caller can say it."""

    skipped_nan_energy: int = 0


def read_data(spec: DataSpec, report: ReadReport | None = None) -> AtomsData:
    """Read `spec.path` into eV/Å and validate it."""
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if spec.forces_sign not in (1.0, -1.0, 1, -1):
        raise DataError(f"{path}: forces_sign must be +1 or -1, got {spec.forces_sign}")
    fmt = spec.format if spec.format != "auto" else _format_from_suffix(path)
    report = report if report is not None else ReadReport()
    readers = {"ani": _read_ani, "npz": _read_npz, "ase": _read_ase}
    if fmt not in readers:
        raise DataError(f"{path}: unknown data format {spec.format!r}; known: {', '.join(FORMATS)}")
    data = _read_untrusted(readers[fmt], fmt, path, spec, report)
    if spec.additions:
        extra = [read_data(DataSpec(path=str(p), **ADDITIONS_KEYS), report) for p in spec.additions]
        data = concatenate([data, *extra], f"{path} + {len(extra)} additions file(s)")
    return data.validate()


def _read_untrusted(reader: Callable[[Path, DataSpec, ReadReport], AtomsData], fmt: str, path: Path,
                    spec: DataSpec, report: ReadReport) -> AtomsData:
    """One reader on a file that may be damaged: whatever h5py, zipfile, zlib, numpy or ase.io
    raise on bytes they cannot make sense of becomes a DataError naming the file (found by
    examples/hardening/fuzz_files.py: a damaged file is read lazily, past the readers' own checks)."""
    try:
        return reader(path, spec, report)
    except DataError:
        raise
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: damaged, or not a {fmt} data file ({type(err).__name__}: {detail})") from None


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "ani"
    if suffix == ".npz":
        return "npz"
    return "ase"


# ---- HDF5 (ANI-1, ANI-1x / ANI-1ccx) ---------------------------------------------------------

def _conformation_groups(h5: h5py.File) -> list[h5py.Group]:
    """All groups that hold a `coordinates` dataset, in file order."""
    found: list[h5py.Group] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "coordinates" in obj:
            found.append(obj)

    if "coordinates" in h5:
        found.append(h5)
    h5.visititems(visit)
    return found


def _group_species(group: h5py.Group, where: str) -> np.ndarray:
    if "atomic_numbers" in group:
        return np.asarray(group["atomic_numbers"][()], dtype=np.int64)
    if "species" in group:
        from ase.data import atomic_numbers

        symbols = [s.decode() if isinstance(s, bytes) else str(s) for s in group["species"][()]]
        try:
            return np.array([atomic_numbers[s] for s in symbols], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"{where}/species: unknown element symbol {err.args[0]!r}") from None
    raise DataError(f"{where}: no 'species' or 'atomic_numbers' dataset")


def _formula(species: np.ndarray) -> str:
    from ase.symbols import Symbols

    return Symbols(species).get_chemical_formula()


def _energy_keys(group: h5py.Group) -> list[str]:
    return sorted(k for k in group if k == "energies" or k.endswith(".energy"))


def ani_energy_key(group: h5py.Group, spec: DataSpec, where: str) -> str:
    """The energy dataset of an ANI-layout group: the configured key, else `energies`."""
    energy_key = spec.energy_key or ("energies" if "energies" in group else "")
    if not energy_key:
        raise DataError(f"{where}: choose the energy with energy_key; this file has "
                        f"{', '.join(_energy_keys(group)) or 'no energy datasets'}")
    if energy_key not in group:
        raise DataError(f"{where}: no dataset {energy_key!r}; energies here: "
                        f"{', '.join(_energy_keys(group)) or 'none'}")
    return energy_key


def _read_ani_group(group: h5py.Group, spec: DataSpec, path: Path, report: ReadReport) -> AtomsData | None:
    where = f"{path}:{group.name}"
    species = _group_species(group, where)
    coords = np.asarray(group["coordinates"][()], dtype=np.float64)
    n_atoms = species.shape[0]
    if coords.ndim != 3 or coords.shape[1:] != (n_atoms, 3):
        raise DataError(f"{where}/coordinates has shape {coords.shape}, expected (n, {n_atoms}, 3) "
                        f"for {n_atoms} species")
    energy_key = ani_energy_key(group, spec, where)
    energy = np.asarray(group[energy_key][()], dtype=np.float64).reshape(-1)
    if energy.shape[0] != coords.shape[0]:
        raise DataError(f"{where}/{energy_key} has {energy.shape[0]} values for {coords.shape[0]} conformations")
    forces = None
    if spec.forces_key:
        if spec.forces_key not in group:
            raise DataError(f"{where}: no dataset {spec.forces_key!r}")
        forces = np.asarray(group[spec.forces_key][()], dtype=np.float64)
        if forces.shape != coords.shape:
            raise DataError(f"{where}/{spec.forces_key} has shape {forces.shape}, expected {coords.shape}")
    rounds = _group_rounds(group, coords.shape[0], where)
    keep = np.isfinite(energy)
    report.skipped_nan_energy += int((~keep).sum())
    if not keep.any():
        return None
    coords, energy = coords[keep], energy[keep]
    n_conf = coords.shape[0]
    return AtomsData(
        species=np.tile(species, n_conf),
        positions=coords.reshape(-1, 3),
        n_atoms=np.full(n_conf, n_atoms),
        energy=energy,
        forces=None if forces is None else forces[keep].reshape(-1, 3),
        group_names=[str(group.attrs.get("name", _formula(species)))],
        group=np.zeros(n_conf, dtype=np.int64),
        round=None if rounds is None else rounds[keep],
        source=where,
    )


def _group_rounds(group: h5py.Group, n_conf: int, where: str) -> np.ndarray | None:
    """The group's active-learning rounds (one non-negative integer per conformation), if it has them."""
    key = next((k for k in ROUND_KEYS if k in group), None)
    if key is None:
        return None
    values = np.asarray(group[key][()]).reshape(-1)
    if values.shape[0] != n_conf:
        raise DataError(f"{where}/{key} has {values.shape[0]} values for {n_conf} conformations")
    whole = values.dtype.kind in "iu" or (values.dtype.kind == "f" and bool(np.all(np.isfinite(values)))
                                          and bool(np.all(values == np.round(values))))
    if not whole or (values.size and values.min() < 0):
        raise DataError(f"{where}/{key} must hold non-negative integers (the round that added each conformation)")
    return values.astype(np.int64)


def _read_ani(path: Path, spec: DataSpec, report: ReadReport) -> AtomsData:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with h5:
        groups = _conformation_groups(h5)
        if not groups:
            raise DataError(f"{path}: no group with a 'coordinates' dataset (not an ANI-style file)")
        parts = [p for g in groups if (p := _read_ani_group(g, spec, path, report)) is not None]
    if not parts:
        raise DataError(f"{path}: every energy under {spec.energy_key or 'energies'!r} is NaN "
                        f"({report.skipped_nan_energy} skipped); no conformations left")
    data = concatenate(parts, source=str(path))
    return _convert_units(data, spec, default_energy="Hartree")


# ---- sGDML npz -----------------------------------------------------------------------------

def _npz_unit(archive: np.lib.npyio.NpzFile, key: str) -> str:
    if key not in archive:
        return ""
    value = str(archive[key])
    return {"Ang": "Angstrom", "kcal/mol": "kcal/mol", "eV": "eV", "Hartree": "Hartree"}.get(value, value)


def _read_npz(path: Path, spec: DataSpec, report: ReadReport) -> AtomsData:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    try:
        return _npz_data(archive, path, spec)
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise DataError(f"{path}: an array holds Python objects (pickles), which ekd never loads: unpickling "
                        "can run code; store numbers and strings only") from None


def _npz_data(archive: np.lib.npyio.NpzFile, path: Path, spec: DataSpec) -> AtomsData:
    with archive:
        energy_key = spec.energy_key or "E"
        for key in ("R", "z", energy_key):
            if key not in archive:
                raise DataError(f"{path}: missing key {key!r} (has {', '.join(archive.files)})")
        coords = np.asarray(archive["R"], dtype=np.float64)
        species = np.asarray(archive["z"], dtype=np.int64).reshape(-1)
        energy = np.asarray(archive[energy_key], dtype=np.float64).reshape(-1)
        if coords.ndim != 3 or coords.shape[1:] != (species.shape[0], 3):
            raise DataError(f"{path}: R has shape {coords.shape}, expected (n, {species.shape[0]}, 3)")
        if energy.shape[0] != coords.shape[0]:
            raise DataError(f"{path}: {energy_key} has {energy.shape[0]} values for {coords.shape[0]} conformations")
        forces_key = spec.forces_key or ("F" if "F" in archive else "")
        forces = None
        if forces_key:
            if forces_key not in archive:
                raise DataError(f"{path}: missing key {forces_key!r}")
            forces = np.asarray(archive[forces_key], dtype=np.float64)
            if forces.shape != coords.shape:
                raise DataError(f"{path}: {forces_key} has shape {forces.shape}, expected {coords.shape}")
        file_energy_unit, file_length_unit = _npz_unit(archive, "e_unit"), _npz_unit(archive, "r_unit")
    n_conf = coords.shape[0]
    data = AtomsData(
        species=np.tile(species, n_conf), positions=coords.reshape(-1, 3),
        n_atoms=np.full(n_conf, species.shape[0]), energy=energy,
        forces=None if forces is None else forces.reshape(-1, 3),
        group_names=[path.stem], source=str(path),
    )
    spec_units = DataSpec(**{**spec.__dict__, "length_unit": spec.length_unit or file_length_unit})
    return _convert_units(data, spec_units, default_energy=file_energy_unit or "kcal/mol")


# ---- anything ase.io reads -------------------------------------------------------------------

def _frame_energy(atoms: object, key: str, where: str) -> float:
    info = getattr(atoms, "info")
    if key in info:
        return float(info[key])
    calc = getattr(atoms, "calc", None)
    if key == "energy" and calc is not None and "energy" in calc.results:
        return float(calc.results["energy"])
    raise DataError(f"{where}: no energy {key!r} (info keys: {', '.join(info) or 'none'})")


def _frame_forces(atoms: object, key: str) -> np.ndarray | None:
    arrays = getattr(atoms, "arrays")
    if key in arrays:
        return np.asarray(arrays[key], dtype=np.float64)
    calc = getattr(atoms, "calc", None)
    if key == "forces" and calc is not None and "forces" in calc.results:
        return np.asarray(calc.results["forces"], dtype=np.float64)
    return None


def _read_ase(path: Path, spec: DataSpec, report: ReadReport) -> AtomsData:
    import ase.io

    if path.suffix.lower() in (".xyz", ".extxyz"):
        _check_xyz_counts(path)
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ase raises many types for unreadable files
        raise DataError(f"{path}: ase.io could not read it ({type(err).__name__}: {err})") from None
    if not frames:
        raise DataError(f"{path}: no frames")
    energy_key = spec.energy_key or "energy"
    forces_key = spec.forces_key or "forces"
    energies = np.array([_frame_energy(a, energy_key, f"{path} frame {i}") for i, a in enumerate(frames)])
    frame_forces = [_frame_forces(a, forces_key) for a in frames]
    if spec.forces_key and any(f is None for f in frame_forces):
        missing = next(i for i, f in enumerate(frame_forces) if f is None)
        raise DataError(f"{path} frame {missing}: no forces {spec.forces_key!r}")
    n_atoms = np.array([len(a) for a in frames])
    has_any_forces = any(f is not None for f in frame_forces)
    periodic = any(a.pbc.any() for a in frames)
    formulas = [a.get_chemical_formula() for a in frames]
    names = sorted(set(formulas))
    data = AtomsData(
        species=np.concatenate([a.numbers for a in frames]),
        positions=np.concatenate([a.positions for a in frames]),
        n_atoms=n_atoms,
        energy=energies,
        forces=np.concatenate([f if f is not None else np.full((len(a), 3), np.nan)
                               for f, a in zip(frame_forces, frames)]) if has_any_forces else None,
        cell=np.stack([np.asarray(a.cell) for a in frames]) if periodic else None,
        pbc=np.stack([a.pbc for a in frames]) if periodic else None,
        group=np.array([names.index(f) for f in formulas]),
        group_names=names,
        source=str(path),
    )
    return _convert_units(data, spec, default_energy="eV")


def _check_xyz_counts(path: Path) -> None:
    """Refuse a frame header asking for more atoms than lines follow: ase.io's XYZ reader would
    read past the end a trillion times for a damaged count of 999999999999 (found by fuzzing)."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    k = 0
    while k < len(lines) and lines[k].strip():
        try:
            count = int(lines[k])
        except ValueError:
            return  # not a count: ase.io says what it expected
        if count < 0 or count > len(lines) - k - 2:
            raise DataError(f"{path} line {k + 1}: a frame of {count} atoms, but {len(lines) - k - 2} lines follow")
        k += count + 2


# ---- units ------------------------------------------------------------------------------------

def _convert_units(data: AtomsData, spec: DataSpec, default_energy: str) -> AtomsData:
    where = f"{data.source}: "
    e = energy_factor(spec.energy_unit or default_energy, where)
    length = length_factor(spec.length_unit or "Angstrom", where)
    data.energy = data.energy * e
    data.positions = data.positions * length
    if data.cell is not None:
        data.cell = data.cell * length
    if data.forces is not None:
        data.forces = data.forces * (float(spec.forces_sign) * e / length)
    return data


def describe(data: AtomsData) -> str:
    """One line for logs: counts and composition."""
    from ase.data import chemical_symbols

    elements = " ".join(chemical_symbols[z] for z in data.elements)
    with_forces = int(data.has_forces.sum())
    return (f"{os.path.basename(data.source)}: {len(data)} conformations, {data.n_total_atoms} atoms, "
            f"{len(data.group_names)} molecules/formulas, elements {elements}, "
            f"{with_forces} with forces")
