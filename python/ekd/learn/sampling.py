"""Where the student's dynamics go: Langevin MD with a model, from the data's molecules and from
clusters of them, with the teachers' committee deviation on every kept frame and each
trajectory checked against the docs/stability.md failure criterion.

All trajectories of a temperature run at once as one disjoint graph (the batched BAOAB
integrator of `ekd.distill.augment`). The criterion is checked on the kept frames (every
`md_every` steps): non-finite positions, a bond stretched past `stretch_factor`, an atom flown
off; its energy-jump part needs every step and is left to `python -m ekd.stability`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
from ase.data import atomic_masses
from ase.symbols import Symbols

from ..config import LearnSettings
from ..data import AtomsData, concatenate
from ..distill.augment import Teachers, langevin, molecule_potential
from ..errors import ConfigError
from ..models import Potential
from ..stability.criterion import FailureCriterion, covalent_bonds, structure_failure
from ..training.progress import Progress

MOLECULE, CLUSTER, BOX = 0, 1, 2
KINDS = ("molecule", "cluster", "box")


@dataclass
class Starts:
    """Starting structures: molecules and clusters, with the data conformations they came from."""

    data: AtomsData
    kind: np.ndarray        # (S,) MOLECULE or CLUSTER
    sources: np.ndarray     # (S, cluster size) data conformation indices, −1 padded


@dataclass
class Trajectories:
    """The kept frames of every trajectory of one model, and how each trajectory ended."""

    frames: AtomsData             # ordered by trajectory, then step
    trajectory: np.ndarray        # (F,) index into the starts
    step: np.ndarray              # (F,)
    temperature: np.ndarray       # (F,) K
    failed_step: np.ndarray       # (T,) first failing kept step, −1 when the trajectory survived
    reason: List[str]             # (T,) why it failed ("" when it survived)
    start_temperature: np.ndarray  # (T,) K
    start_kind: np.ndarray        # (T,)
    start_sources: np.ndarray     # (T, k) data conformations the start was made of (−1 padded)

    @property
    def survived(self) -> np.ndarray:
        return self.failed_step < 0


# ---- starting structures ----------------------------------------------------------------------------

def starting_structures(data: AtomsData, train_ids: np.ndarray, settings: LearnSettings,
                        rng: np.random.Generator) -> Starts:
    """`md_starts` training molecules and `cluster_starts` clusters of training molecules."""
    molecules = np.sort(rng.choice(train_ids, size=settings.md_starts, replace=settings.md_starts > len(train_ids)))
    parts, kinds = [data.subset(molecules)], [np.full(len(molecules), MOLECULE)]
    sources = [molecules[:, None]]
    if settings.cluster_starts:
        pool = cluster_pool(data, train_ids, settings.cluster_molecules)
        chosen = rng.choice(pool, size=(settings.cluster_starts, settings.cluster_size))
        parts.append(concatenate([cluster(data, row, settings.cluster_contact, rng) for row in chosen], "clusters"))
        kinds.append(np.full(settings.cluster_starts, CLUSTER))
        sources.append(chosen)
    starts = concatenate(parts, "starting structures")
    return Starts(starts, np.concatenate(kinds), sources[0] if len(sources) == 1 else _stack_padded(*sources))


def cluster_pool(data: AtomsData, train_ids: np.ndarray, names: List[str]) -> np.ndarray:
    """Training conformations of the groups clusters are built from (all groups when `names` is empty)."""
    if not names:
        return np.asarray(train_ids)
    unknown = sorted(set(names) - set(data.group_names))
    if unknown:
        raise ConfigError(f"[learn] cluster_molecules: no group {unknown[0]!r} in the data; groups: "
                          f"{', '.join(data.group_names)}")
    wanted = [data.group_names.index(n) for n in names]
    return np.asarray(train_ids)[np.isin(data.group[train_ids], wanted)]


def cluster(data: AtomsData, conformations: np.ndarray, contact: float, rng: np.random.Generator) -> AtomsData:
    """The molecules of `conformations`, each turned at random and brought in from a random
    direction until its closest atom is `contact` Å from the cluster so far."""
    species, positions = [], []
    for c in conformations:
        atoms = data.atom_indices(np.array([c]))
        z, x = data.species[atoms], data.positions[atoms]
        mass = atomic_masses[z][:, None]
        x = (x - (mass * x).sum(0) / mass.sum()) @ random_rotation(rng).T
        if positions:
            placed = np.concatenate(positions)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            x = x + direction * distance_for_contact(placed, x, direction, contact)
        species.append(z)
        positions.append(x)
    names = [data.group_names[data.group[c]] for c in conformations]
    name = f"({names[0]}){len(names)}" if len(set(names)) == 1 else "+".join(sorted(names))
    return AtomsData(species=np.concatenate(species), positions=np.concatenate(positions),
                     n_atoms=np.array([sum(len(z) for z in species)]), energy=np.array([np.nan]),
                     group_names=[name], source="cluster")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def distance_for_contact(placed: np.ndarray, moving: np.ndarray, direction: np.ndarray, contact: float) -> float:
    """The shift along `direction` at which `moving`'s closest atom to `placed` is `contact` Å away."""
    def closest(shift: float) -> float:
        d = placed[:, None] - (moving + shift * direction)[None]
        return float(np.sqrt((d * d).sum(-1)).min())

    low, high = 0.0, 1.0
    while closest(high) < contact:
        low, high = high, high * 2
    for _ in range(40):  # bisection (the closest distance grows with the shift once outside)
        mid = 0.5 * (low + high)
        low, high = (mid, high) if closest(mid) < contact else (low, mid)
    return high


# ---- dynamics ---------------------------------------------------------------------------------------

def run_dynamics(driver: Potential, teachers: Teachers, starts: Starts, settings: LearnSettings, seed: int,
                 criterion: FailureCriterion, progress: bool, what: str) -> Trajectories:
    """Every start at every temperature under `driver`; frames up to each trajectory's failure."""
    parts: List[AtomsData] = []
    columns: Dict[str, List[np.ndarray]] = {k: [] for k in ("trajectory", "step", "temperature")}
    failed, reasons, temperatures, kinds = [], [], [], []
    for t_index, temperature in enumerate(settings.temperatures):
        rng = np.random.default_rng([seed, 7, t_index])
        potential = molecule_potential(driver, teachers, starts.data)
        offset = t_index * len(starts.data)
        frames = []
        bar = Progress(settings.md_steps, f"{what} MD {temperature:g} K", unit="step", enabled=progress)
        for step, x, _, alive in langevin(potential, starts.data, temperature, settings.md_timestep,
                                          settings.md_friction, settings.md_steps, settings.md_every, rng):
            frames.append((step, x.copy(), alive.copy()))
            bar.update(settings.md_every)
        bar.close()
        data, trajectory, step, first_failure, why = _cut_at_failure(starts.data, frames, criterion)
        parts.append(data)
        columns["trajectory"].append(trajectory + offset)
        columns["step"].append(step)
        columns["temperature"].append(np.full(len(data), float(temperature)))
        failed.append(first_failure)
        reasons += why
        temperatures.append(np.full(len(starts.data), float(temperature)))
        kinds.append(starts.kind)
    frames_data = concatenate(parts, f"{what} MD frames")
    return Trajectories(frames_data, *(np.concatenate(columns[k]) for k in ("trajectory", "step", "temperature")),
                        np.concatenate(failed), reasons, np.concatenate(temperatures), np.concatenate(kinds),
                        np.tile(starts.sources, (len(settings.temperatures), 1)))


def _cut_at_failure(start: AtomsData, frames: List[tuple[int, np.ndarray, np.ndarray]], criterion: FailureCriterion
                    ) -> tuple[AtomsData, np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """The frames of each trajectory before its first failing frame, and that frame's step and reason."""
    offsets = start.offsets
    failed = np.full(len(start), -1)
    reasons = [""] * len(start)
    keep: List[tuple[int, int, np.ndarray]] = []  # (trajectory, step, positions)
    for t in range(len(start)):
        atoms = slice(offsets[t], offsets[t + 1])
        species = start.species[atoms]
        bonds = covalent_bonds(species, start.positions[atoms], criterion.bond_factor)
        for step, x, alive in frames:
            reason = structure_failure(x[atoms], bonds, species, criterion) if alive[t] else \
                "positions or forces stopped being finite"
            if reason:
                failed[t], reasons[t] = step, reason
                break
            keep.append((t, step, x[atoms]))
    trajectory = np.array([k[0] for k in keep], dtype=np.int64)
    step = np.array([k[1] for k in keep], dtype=np.int64)
    data = start.subset(trajectory)
    data.positions = np.concatenate([k[2] for k in keep]) if keep else np.zeros((0, 3))
    data.energy = np.full(len(data), np.nan)
    return data, trajectory, step, failed, reasons


def committee_deviation(teachers: Teachers, frames: AtomsData, progress: bool) -> np.ndarray:
    """(F,) the largest per-atom force deviation of the teachers in each frame (eV/Å)."""
    if not len(frames):
        return np.zeros(0)
    spread = teachers.label(frames, progress, "committee")["forces_std"]
    return np.maximum.reduceat(spread, frames.offsets[:-1])


def join(first: Trajectories, second: Trajectories) -> Trajectories:
    """Two sets of trajectories as one (the second's trajectories numbered after the first's)."""
    offset = len(first.failed_step)
    return Trajectories(concatenate([first.frames, second.frames], "sampled frames"),
                        np.concatenate([first.trajectory, second.trajectory + offset]),
                        np.concatenate([first.step, second.step]), np.concatenate([first.temperature, second.temperature]),
                        np.concatenate([first.failed_step, second.failed_step]), first.reason + second.reason,
                        np.concatenate([first.start_temperature, second.start_temperature]),
                        np.concatenate([first.start_kind, second.start_kind]),
                        _stack_padded(first.start_sources, second.start_sources))


def _stack_padded(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows of both (k columns each, −1 padded to the wider)."""
    width = max(first.shape[1], second.shape[1])
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in (first, second)])


def lowest_energies(data: AtomsData, train_ids: np.ndarray) -> Dict[str, float]:
    """Chemical formula → the lowest training energy (eV) of that molecule: the floor against which
    a labelled conformation's excess energy is measured."""
    out: Dict[str, float] = {}
    offsets = data.offsets
    for c in np.asarray(train_ids):
        formula = Symbols(data.species[offsets[c]:offsets[c + 1]]).get_chemical_formula()
        out[formula] = min(out.get(formula, np.inf), float(data.energy[c]))
    return out


def start_references(data: AtomsData, sources: np.ndarray, minima: Dict[str, float]) -> np.ndarray:
    """(S,) the sum of the lowest training energies of the molecules each start is made of."""
    offsets = data.offsets
    return np.array([sum(minima.get(Symbols(data.species[offsets[c]:offsets[c + 1]]).get_chemical_formula(), np.nan)
                         for c in row if c >= 0) for row in sources])
