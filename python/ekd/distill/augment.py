"""Conformations the reference never computed, labelled by the teachers (the `augment` stage).

The teachers can label any geometry, so the student need not learn only where a reference
energy exists. Two generators, both starting from training conformations only (validation and
test conformations never leak into training):

- **displaced**: copies of every training conformation with independent Gaussian displacements
  of `amplitude` Å per Cartesian component;
- **md**: Langevin dynamics driven by the ensemble-mean forces (BAOAB) — or by another model,
  `md_model`, e.g. an earlier run's student, to label where *that* model goes — many molecules
  at once as one disjoint graph, a frame kept every `md_every` steps. A trajectory ends at the first
  kept frame where the teachers disagree beyond `max_spread`: beyond it the dynamics would
  follow forces nobody trusts.

Every generated conformation is labelled like the data (`labels.ensemble_labels`); those with
an atom whose force spread passes `max_spread` are dropped, and at most `budget` are kept
(drawn at random). None has a reference energy: the student learns the ensemble-mean forces
there, and the ensemble-mean energy only if `[augment] energies = "ensemble"`.

Layout of `augmented.h5` (C conformations, A atoms; eV, Å):

    species (A,), positions (A, 3), n_atoms (C,), group (C,)   the conformations (attrs group_names)
    source_conformation (C,)  the training conformation it was made from (index in the data)
    generator (C,)            index into attrs generators ("displaced", "md")
    setting (C,)              displacement amplitude (Å) or MD temperature (K)
    trajectory (C,)           MD trajectory within its temperature (−1 for displaced copies)
    step (C,)                 MD step of the frame (0 for displaced copies)
    max_spread (C,)           largest per-atom force spread of the teachers (eV/Å)
    energy_mean, energy_std (C,), forces_mean (A, 3), forces_std (A,), atom_energy_mean (A,)
    attrs: format, version, teacher_sha256, data_fingerprint, settings (JSON of [augment]),
           seed, reference_energy = "none", counts (JSON: generated, dropped, kept), created

Resumable: each generator's labelled conformations are written as one group of
`augmented.h5.partial` when done (the file is rewritten whole each time, atomically); a killed
run, or one whose disk filled, keeps the finished groups, and the final file is written only
when complete.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import h5py
import numpy as np
import torch
from ase import units
from ase.data import atomic_masses

from ..config import AugmentSettings
from ..data import AtomsData, Batch, GraphData, concatenate, element_index
from ..errors import ConfigError, DataError, EkdError
from ..fileio import atomic_hdf5, file_sha256
from ..models import Potential, load_model, predict
from ..models.ensemble import Ensemble
from ..training.progress import Progress
from .labels import ensemble_labels

AUGMENTED_FORMAT = "ekd-augmented"
AUGMENTED_VERSION = 1
GENERATORS = ("displaced", "md")
_LABELS = ("energy_mean", "energy_std", "forces_mean", "forces_std", "atom_energy_mean")
_CONFORMATION_LABELS = ("energy_mean", "energy_std")
_PROVENANCE = ("source_conformation", "generator", "setting", "trajectory", "step", "max_spread")


@dataclass
class Augmented:
    """Generated conformations (energies NaN: no reference), their provenance and labels."""

    data: AtomsData
    provenance: Dict[str, np.ndarray]   # the _PROVENANCE arrays, per conformation
    labels: Dict[str, np.ndarray]       # the _LABELS arrays

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class Teachers:
    """What the generators need of the run: the teachers and how to build graphs for them."""

    models: List[Potential]
    elements: List[int]
    dtype: torch.dtype
    device: str
    batch_size: int = 256

    @property
    def cutoff(self) -> float:
        return max(m.cutoff for m in self.models)

    def label(self, data: AtomsData, progress: bool, what: str) -> Dict[str, np.ndarray]:
        """Every label of every conformation of `data`, in batches."""
        graph = GraphData(data, self.elements, self.cutoff, self.dtype, self.device)
        parts: List[Dict[str, np.ndarray]] = []
        bar = Progress(len(data), f"label {what}", unit="conf", enabled=progress)
        for start in range(0, len(data), self.batch_size):
            ids = np.arange(start, min(start + self.batch_size, len(data)))
            parts.append(ensemble_labels(self.models, graph, ids))
            bar.update(len(ids))
        bar.close()
        return {name: np.concatenate([p[name] for p in parts]) for name in _LABELS}


# ---- generators -----------------------------------------------------------------------------------

def displaced_copies(data: AtomsData, train_ids: np.ndarray, copies: int, amplitude: float,
                     rng: np.random.Generator) -> tuple[AtomsData, Dict[str, np.ndarray]]:
    """`copies` copies of every training conformation, each atom moved by N(0, amplitude²) per axis."""
    sources = np.repeat(np.asarray(train_ids), copies)
    out = data.subset(sources)
    out.positions = out.positions + rng.normal(0.0, amplitude, out.positions.shape)
    return _without_reference(out), {"source_conformation": sources, "setting": np.full(len(sources), amplitude),
                                     "trajectory": np.full(len(sources), -1), "step": np.zeros(len(sources), np.int64)}


def md_driver(teachers: Teachers, settings: AugmentSettings) -> Potential:
    """The model whose forces drive the MD: the ensemble mean, or the model of `md_model`."""
    if not settings.md_model:
        return Ensemble(teachers.models).eval()
    try:
        driver = load_model(Path(settings.md_model))
    except EkdError as err:
        raise ConfigError(f"[augment] md_model: {err}") from None
    if list(driver.elements) != list(teachers.elements):
        raise ConfigError(f"[augment] md_model {settings.md_model} knows elements {driver.elements}, the teachers "
                          f"{teachers.elements}")
    return driver.to(teachers.dtype).eval()


def driven_md(driver: Potential, teachers: Teachers, data: AtomsData, starts: np.ndarray, temperature: float,
              settings: AugmentSettings, rng: np.random.Generator,
              progress: bool) -> tuple[AtomsData, Dict[str, np.ndarray]]:
    """Langevin MD of conformations `starts` of `data` at once under the forces of `driver`;
    the frames every `md_every` steps of trajectories still finite."""
    start = data.subset(starts)
    if start.is_periodic:
        raise ConfigError("[augment] md_starts: the MD runs molecules and clusters only; this data set is "
                          "periodic (use displaced copies)")
    potential = molecule_potential(driver, teachers, start)
    frames, positions, steps = [], [], []
    bar = Progress(settings.md_steps, f"MD {temperature:g} K", unit="step", enabled=progress)
    for step, x, _, alive in langevin(potential, start, temperature, settings.md_timestep, settings.md_friction,
                                      settings.md_steps, settings.md_every, rng):
        frames.append(np.flatnonzero(alive))
        positions.append(x.copy())
        steps.append(step)
        bar.update(settings.md_every)
    bar.close()
    return _frames(start, starts, frames, positions, steps, temperature)


MoleculePotential = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def langevin(potential: MoleculePotential, start: AtomsData, temperature: float, timestep: float, friction: float,
             steps: int, every: int, rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Langevin dynamics (BAOAB splitting; ASE units: eV, Å, amu) of the molecules of `start`
    under `potential(x) -> (energy per molecule, forces)`, from Maxwell–Boltzmann velocities
    without net momentum. Yields (step, positions, velocities, alive) every `every` steps; a
    molecule whose positions or forces stop being finite is no longer alive and is frozen at
    its start. timestep: fs; friction: 1/fs (0: velocity Verlet, energy conserving)."""
    masses = atomic_masses[start.species][:, None]
    conformation = start.conformation_of_atom
    kt = units.kB * temperature
    dt = timestep * units.fs
    c1 = math.exp(-friction / units.fs * dt)
    c2 = math.sqrt(1.0 - c1 * c1)
    x = start.positions.copy()
    v = thermal_velocities(masses, conformation, len(start), kt, rng)
    f = potential(x)[1]
    alive = np.ones(len(start), dtype=bool)
    for step in range(1, steps + 1):
        moving = alive[conformation][:, None]
        v = np.where(moving, v + 0.5 * dt * f / masses, 0.0)
        x = x + 0.5 * dt * v
        if friction:
            v = np.where(moving, c1 * v + c2 * np.sqrt(kt / masses) * rng.standard_normal(v.shape), 0.0)
        x = x + 0.5 * dt * v
        f = potential(x)[1]
        v = v + 0.5 * dt * f / masses
        finite = np.isfinite(x).all(axis=1) & np.isfinite(f).all(axis=1) & np.isfinite(v).all(axis=1)
        alive &= np.bincount(conformation, weights=~finite, minlength=len(start)) == 0
        dead = ~alive[conformation]  # frozen at the start, where their forces are finite
        x[dead], v[dead], f[dead] = start.positions[dead], 0.0, 0.0
        if step % every == 0:
            yield step, x, v, alive


def thermal_velocities(masses: np.ndarray, conformation: np.ndarray, n_conf: int, kt: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Maxwell–Boltzmann velocities (masses (A, 1) amu) with each molecule's momentum removed."""
    v = rng.standard_normal((len(masses), 3)) * np.sqrt(kt / masses)
    momentum = np.stack([np.bincount(conformation, weights=(masses[:, 0] * v[:, k]), minlength=n_conf)
                         for k in range(3)], axis=1)
    total_mass = np.bincount(conformation, weights=masses[:, 0], minlength=n_conf)
    return v - (momentum / total_mass[:, None])[conformation]


def molecule_potential(model: Potential, teachers: Teachers, start: AtomsData) -> MoleculePotential:
    """x -> (network energy per molecule (eV), forces (eV/Å)) of `model` for `start`'s atoms at
    positions x (float64): all pairs within each molecule closer than the cutoff, every call."""
    n = start.n_atoms
    offsets = start.offsets[:-1]
    receivers, senders = [], []
    for count in np.unique(n):
        i, j = np.nonzero(~np.eye(count, dtype=bool))
        base = offsets[n == count][:, None]
        receivers.append((base + i).ravel())
        senders.append((base + j).ravel())
    all_receivers = torch.as_tensor(np.concatenate(receivers))
    all_senders = torch.as_tensor(np.concatenate(senders))
    species = torch.as_tensor(element_index(start.species, teachers.elements, start.source))
    conformation = torch.as_tensor(start.conformation_of_atom)
    cutoff = teachers.cutoff

    def potential(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = torch.as_tensor(x, dtype=teachers.dtype)
        distance = torch.linalg.vector_norm(positions[all_senders] - positions[all_receivers], dim=-1)
        near = distance < cutoff
        batch = Batch(species=species, positions=positions, receivers=all_receivers[near], senders=all_senders[near],
                      shifts=None, conformation=conformation, n_conformations=len(start))
        result = predict(model, batch, forces=True)
        assert result.forces is not None
        return result.energy.detach().double().numpy(), result.forces.detach().double().numpy()

    return potential


def _frames(start: AtomsData, starts: np.ndarray, frames: List[np.ndarray], positions: List[np.ndarray],
            steps: List[int], temperature: float) -> tuple[AtomsData, Dict[str, np.ndarray]]:
    """The kept MD frames as one data set, ordered by trajectory then step."""
    parts, trajectories, frame_steps = [], [], []
    for alive, x, step in zip(frames, positions, steps):
        if alive.size:
            frame = start.subset(alive)
            frame.positions = x[start.atom_indices(alive)]
            parts.append(frame)
            trajectories.append(alive)
            frame_steps.append(np.full(alive.size, step))
    if not parts:
        parts, trajectories, frame_steps = [start.subset(np.zeros(0, np.int64))], [np.zeros(0, np.int64)], \
            [np.zeros(0, np.int64)]
    data = concatenate(parts, f"MD at {temperature:g} K")
    data.group, data.group_names = np.concatenate([p.group for p in parts]), start.group_names
    trajectory, step = np.concatenate(trajectories), np.concatenate(frame_steps)
    order = np.lexsort((step, trajectory))
    return _without_reference(data.subset(order)), {
        "source_conformation": starts[trajectory[order]], "setting": np.full(len(order), temperature),
        "trajectory": trajectory[order], "step": step[order]}


def _without_reference(data: AtomsData) -> AtomsData:
    data.energy = np.full(len(data), np.nan)
    data.forces = None
    return data


# ---- the stage ------------------------------------------------------------------------------------

def make_augmented(path: Path, teachers: Teachers, hashes: List[str], data: AtomsData, fingerprint: str,
                   train_ids: np.ndarray, settings: AugmentSettings, seed: int, resume: bool = True,
                   progress: bool = True, say: Callable[[str], None] = print) -> Augmented:
    """Generate, label, select and write the augmented conformations to `path` (see the module
    docstring); reuses the finished generator groups of an interrupted run."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    identity = _identity(hashes, fingerprint, settings, seed)
    parts: List[Augmented] = []
    finished = _finished_groups(partial, identity, resume, data.group_names)
    for name, generate in _generators(teachers, data, train_ids, settings, seed, progress):
        if name in finished:
            parts.append(finished[name])
            say(f"augment: {name}: {len(parts[-1])} conformations kept from an interrupted run")
            continue
        begin = time.perf_counter()
        generated, provenance = generate()
        labels = teachers.label(generated, progress, name) if len(generated) else \
            {k: np.zeros((0, 3) if k == "forces_mean" else 0) for k in _LABELS}
        provenance["generator"] = np.full(len(generated), GENERATORS.index(name.split("_")[0]))
        provenance["max_spread"] = np.maximum.reduceat(labels["forces_std"], generated.offsets[:-1]) \
            if len(generated) else np.zeros(0)
        part = Augmented(generated, provenance, labels)
        _add_group(partial, identity, name, part)
        parts.append(part)
        say(f"augment: {name}: {len(part)} conformations generated and labelled "
            f"({time.perf_counter() - begin:.0f} s)")
    augmented, counts = _select(parts, settings, np.random.default_rng([seed, 99]))
    say(f"augment: {counts['kept']} of {counts['generated']} conformations kept ({counts['spread']} over "
        f"max_spread = {settings.max_spread:g} eV/Å, {counts['budget']} over the budget)")
    if not len(augmented):
        raise ConfigError(f"[augment] no generated conformation passes max_spread = {settings.max_spread:g} eV/Å "
                          "(the teachers disagree more everywhere); raise it, or set it to 0 to keep all")
    _write_final(partial, path, augmented, identity, counts, data.group_names)
    return augmented


def _generators(teachers: Teachers, data: AtomsData, train_ids: np.ndarray, settings: AugmentSettings, seed: int,
                progress: bool):
    """(name, generate) of every configured generator, each with its own seeded random stream."""
    if settings.displaced:
        yield "displaced", lambda: displaced_copies(data, train_ids, settings.displaced, settings.amplitude,
                                                    np.random.default_rng([seed, 1]))
    if settings.md_starts:
        driver = md_driver(teachers, settings)
        for k, temperature in enumerate(settings.md_temperatures):
            def generate(temperature: float = float(temperature), k: int = k):
                rng = np.random.default_rng([seed, 2, k])
                starts = np.sort(rng.choice(train_ids, size=settings.md_starts, replace=settings.md_starts > len(train_ids)))
                return driven_md(driver, teachers, data, starts, temperature, settings, rng, progress)
            yield f"md_{temperature:g}K", generate


def _select(parts: List[Augmented], settings: AugmentSettings,
            rng: np.random.Generator) -> tuple[Augmented, Dict[str, int]]:
    """Drop conformations over max_spread (and, in MD, every later frame of their trajectory),
    then keep at most `budget` at random."""
    keep_parts = []
    for part in parts:
        over = part.provenance["max_spread"] > settings.max_spread if settings.max_spread else np.zeros(len(part), bool)
        trajectory = part.provenance["trajectory"]
        for t in np.unique(trajectory[trajectory >= 0]):  # MD: a trajectory ends at its first frame over
            rows = np.flatnonzero(trajectory == t)         # (frames are ordered by step)
            over[rows] = np.maximum.accumulate(over[rows])
        keep_parts.append(np.flatnonzero(~over))
    generated = sum(len(p) for p in parts)
    after_spread = sum(len(k) for k in keep_parts)
    whole = _join([_subset(p, k) for p, k in zip(parts, keep_parts)])
    keep = np.arange(len(whole))
    if settings.budget and len(whole) > settings.budget:
        keep = np.sort(rng.choice(len(whole), size=settings.budget, replace=False))
    return _subset(whole, keep), {"generated": generated, "spread": generated - after_spread,
                                  "budget": after_spread - len(keep), "kept": len(keep)}


def _subset(part: Augmented, rows: np.ndarray) -> Augmented:
    atoms = part.data.atom_indices(rows)
    return Augmented(_without_reference(part.data.subset(rows)), {k: v[rows] for k, v in part.provenance.items()},
                     {k: v[rows] if k in _CONFORMATION_LABELS else v[atoms] for k, v in part.labels.items()})


def _join(parts: List[Augmented]) -> Augmented:
    names = parts[0].data.group_names
    data = concatenate([p.data for p in parts], "augmented conformations")
    data.group, data.group_names = np.concatenate([p.data.group for p in parts]), names
    return Augmented(_without_reference(data),
                     {k: np.concatenate([p.provenance[k] for p in parts]) for k in _PROVENANCE},
                     {k: np.concatenate([p.labels[k] for p in parts]) for k in _LABELS})


# ---- the file -------------------------------------------------------------------------------------

def _identity(hashes: List[str], fingerprint: str, settings: AugmentSettings, seed: int) -> Dict[str, object]:
    """What makes the conformations and labels of a file: teachers, data, seed and the
    generators' settings (not `energies`, which only says how the student uses them)."""
    generators = {k: v for k, v in asdict(settings).items() if k != "energies"}
    if settings.md_model and Path(settings.md_model).exists():
        generators["md_model_sha256"] = file_sha256(Path(settings.md_model))
    return {"teacher_sha256": hashes, "data_fingerprint": fingerprint, "seed": seed,
            "settings": json.dumps(generators, sort_keys=True)}


def _finished_groups(partial: Path, identity: Dict[str, object], resume: bool,
                     group_names: List[str]) -> Dict[str, Augmented]:
    """The complete generator groups of an interrupted run's partial file, when it was made by
    these teachers, data, seed and settings (and resume is set); a partial file of others, or
    an unreadable one, is removed."""
    if not partial.exists():
        return {}
    if not resume:
        raise DataError(f"{partial} is from an interrupted run; pass --resume to continue it")
    try:
        with h5py.File(partial, "r") as h5:
            if all(_same(h5.attrs.get(k), v) for k, v in identity.items()):
                return {name: _read_group(h5[name], group_names) for name in h5
                        if h5[name].attrs.get("complete", False)}
    except OSError:
        pass
    partial.unlink()
    return {}


def _same(saved: object, wanted: object) -> bool:
    if isinstance(wanted, list):
        return saved is not None and [str(s) for s in saved] == wanted  # type: ignore[union-attr]
    return saved == wanted


def _add_group(partial: Path, identity: Dict[str, object], name: str, part: Augmented) -> None:
    """Add a finished generator's group to the partial file, rewritten whole (atomic_hdf5): a
    write that fails (disk full) leaves the file as it was, with the groups finished before."""
    with atomic_hdf5(partial, update=True) as h5:
        h5.attrs.update(identity)
        if name in h5:
            del h5[name]
        group = h5.create_group(name)
        _write_arrays(group, part)
        group.attrs["complete"] = True


def _write_arrays(group: h5py.Group, part: Augmented) -> None:
    d = part.data
    for key, value in (("species", d.species), ("positions", d.positions), ("n_atoms", d.n_atoms),
                       ("group", d.group), *part.provenance.items(), *part.labels.items()):
        group.create_dataset(key, data=value)


def _read_group(group: h5py.Group, group_names: List[str]) -> Augmented:
    try:
        n_atoms = group["n_atoms"][()]
        data = AtomsData(species=group["species"][()], positions=group["positions"][()], n_atoms=n_atoms,
                         energy=np.full(len(n_atoms), np.nan), group=group["group"][()], group_names=list(group_names),
                         source=f"{group.file.filename}:{group.name}")
        return Augmented(data, {k: group[k][()] for k in _PROVENANCE}, {k: group[k][()] for k in _LABELS})
    except KeyError as err:
        raise DataError(f"{group.file.filename}: group {group.name} lacks {err}") from None


def _write_final(partial: Path, path: Path, augmented: Augmented, identity: Dict[str, object],
                 counts: Dict[str, int], group_names: List[str]) -> None:
    with atomic_hdf5(path) as h5:
        _write_arrays(h5, augmented)
        h5.attrs.update({"format": AUGMENTED_FORMAT, "version": AUGMENTED_VERSION, **identity,
                         "generators": list(GENERATORS), "group_names": list(group_names),
                         "reference_energy": "none", "counts": json.dumps(counts),
                         "energy_unit": "eV", "length_unit": "Angstrom",
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    partial.unlink(missing_ok=True)


def read_augmented(path: Path, hashes: List[str], fingerprint: str, settings: AugmentSettings,
                   seed: int) -> Optional[Augmented]:
    """The augmented conformations of `path`, or None when the file is missing or was made by
    other teachers, data or settings (the stage then makes it again)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with h5:
        if h5.attrs.get("format") != AUGMENTED_FORMAT:
            raise DataError(f"{path}: not an ekd augmented-conformations file")
        identity = _identity(hashes, fingerprint, settings, seed)
        if not all(_same(h5.attrs.get(k), v) for k, v in identity.items()):
            return None
        return _read_group(h5["/"], [str(g) for g in h5.attrs["group_names"]])
