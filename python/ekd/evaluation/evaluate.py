"""Evaluate trained models on a data file: errors, uncertainty calibration and a forces sign check.

This is the logic behind `python -m ekd.evaluate` (docs/evaluate.md). It has four parts:

1. **Metrics** — pure numpy functions on flat arrays (eV, eV/Å): energy errors per
   conformation and per atom, relative conformer energies within each molecule, force
   component errors, the angle between predicted and true force vectors, per-element force
   errors, and for ensembles the rank correlation and binned calibration of spread vs error.
2. **Models** — exported TorchScript files are run through the deployment contract
   (export/CONTRACT.md: one disjoint graph per batch, every atom a local node, forces from
   `edge_grad`), so what is evaluated is exactly what LAMMPS and ASE run; training checkpoints
   are run with `predict_all`. Every model yields the same `ModelOutput`.
3. **Sign check** — some published files store gradients under the name "forces". Along a
   trajectory (consecutive conformations a small step apart) the trapezoid rule gives
   E₂ − E₁ ≈ −½(F₁ + F₂)·(x₂ − x₁) for true forces; otherwise the models themselves are the
   witness: if every model's forces point against the file's, the file is what is wrong.
4. **Report** — report.json, report.md and PNG plots.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data import AtomsData, GraphData, neighbor_pairs
from ..errors import DataError, EkdError, ModelFileError
from ..fileio import atomic_write_text
from ..training.metrics import errors

# ---- settings -----------------------------------------------------------------------------------

MIN_FORCE_FOR_ANGLE = 0.05      # eV/Å: below this the direction of the true force is mostly noise
CALIBRATION_BINS = 5            # equal-count bins of the spread
TRAJECTORY_STEP = 0.1           # Å: largest atom displacement between consecutive conformations of a trajectory
MIN_TRAJECTORY_PAIRS = 3        # fewer pairs than this: the finite-difference check says nothing
SIGN_FLIP_SLOPE = -0.5          # finite-difference slope below this: the forces are gradients
SIGN_FLIP_COSINE = -0.5         # every model's force cosine below this: the forces are gradients


@dataclass
class EvaluationSettings:
    """Thresholds of the metrics and of the sign check (defaults: the module constants)."""

    min_force_for_angle: float = MIN_FORCE_FOR_ANGLE
    calibration_bins: int = CALIBRATION_BINS
    trajectory_step: float = TRAJECTORY_STEP


# ---- 1. metrics ----------------------------------------------------------------------------------

def error_stats(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, Any]:
    """MAE, RMSE and count over the finite reference entries."""
    return errors(np.asarray(prediction), np.asarray(reference))


def relative_to_group_mean(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """`values` minus the mean of their group (molecule): conformer energies on one scale."""
    values = np.asarray(values, dtype=np.float64)
    group = np.asarray(group)
    _, index = np.unique(group, return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index)
    return values - (sums / counts)[index]


def relative_energy_errors(prediction: np.ndarray, reference: np.ndarray, group: np.ndarray) -> Dict[str, Any]:
    """Errors of conformer energies relative to each molecule's mean, prediction and reference
    each relative to their own mean. A molecule with one conformation has no relative energy
    and is left out."""
    group = np.asarray(group)
    _, index, counts = np.unique(group, return_inverse=True, return_counts=True)
    keep = counts[index] > 1
    if not keep.any():
        return {"mae": None, "rmse": None, "count": 0, "molecules": 0}
    out = error_stats(relative_to_group_mean(np.asarray(prediction)[keep], group[keep]),
                      relative_to_group_mean(np.asarray(reference)[keep], group[keep]))
    out["molecules"] = int(len(np.unique(group[keep])))
    return out


def force_angles(prediction: np.ndarray, reference: np.ndarray,
                 min_force: float = MIN_FORCE_FOR_ANGLE) -> np.ndarray:
    """Angle (degrees) between predicted and true force vectors, one per atom whose true force
    is finite and at least `min_force` long. A zero predicted force counts as 90°."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    true_norm = np.linalg.norm(reference, axis=1)
    keep = np.isfinite(reference).all(axis=1) & (true_norm >= min_force)
    p, r = prediction[keep], reference[keep]
    norms = np.linalg.norm(p, axis=1) * true_norm[keep]
    cosine = np.divide(np.sum(p * r, axis=1), norms, out=np.zeros(len(p)), where=norms > 0)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def force_cosine(prediction: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """Cosine between all predicted and all true force components as two long vectors (atoms
    with finite true forces): +1 same directions, −1 every force reversed."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    keep = np.isfinite(reference).all(axis=1)
    p, r = prediction[keep].ravel(), reference[keep].ravel()
    norm = float(np.linalg.norm(p) * np.linalg.norm(r))
    return float(p @ r / norm) if norm > 0 else None


def per_element_force_errors(prediction: np.ndarray, reference: np.ndarray, species: np.ndarray
                             ) -> Dict[str, Dict[str, Any]]:
    """Force component MAE / RMSE of the atoms of each element (symbol → stats, `count` in atoms)."""
    from ase.data import chemical_symbols

    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1, 3)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(reference).all(axis=1)
    out: Dict[str, Dict[str, Any]] = {}
    for z in np.unique(species):
        mask = (species == z) & finite
        if mask.any():
            stats = error_stats(prediction[mask], reference[mask])
            stats["count"] = int(mask.sum())
            out[chemical_symbols[int(z)]] = stats
    return out


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they occupy (as Spearman's ρ needs)."""
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Spearman rank correlation over the pairs where both are finite (None: fewer than 3
    pairs, or one side constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return None
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / norm) if norm > 0 else None


def calibration_bins(spread: np.ndarray, error: np.ndarray, n_bins: int = CALIBRATION_BINS
                     ) -> List[Dict[str, Any]]:
    """Equal-count bins of increasing spread; in each, the spread range, RMS spread, RMSE and
    MAE of the (absolute) errors. A calibrated ensemble has RMSE ≈ RMS spread in every bin."""
    spread, error = np.asarray(spread, dtype=np.float64), np.abs(np.asarray(error, dtype=np.float64))
    keep = np.isfinite(spread) & np.isfinite(error)
    spread, error = spread[keep], error[keep]
    order = np.argsort(spread, kind="stable")
    bins = []
    for chunk in np.array_split(order, min(n_bins, len(order))) if len(order) else []:
        s, e = spread[chunk], error[chunk]
        bins.append({"spread_min": float(s.min()), "spread_max": float(s.max()),
                     "rms_spread": float(np.sqrt(np.mean(s ** 2))), "rmse": float(np.sqrt(np.mean(e ** 2))),
                     "mae": float(np.mean(e)), "count": int(len(chunk))})
    return bins


def uncertainty_metrics(spread: np.ndarray, error: np.ndarray, n_bins: int = CALIBRATION_BINS) -> Dict[str, Any]:
    """Does the spread rank and size the error: Spearman ρ, bins, and overall RMSE / RMS spread."""
    spread, error = np.asarray(spread, dtype=np.float64), np.abs(np.asarray(error, dtype=np.float64))
    keep = np.isfinite(spread) & np.isfinite(error)
    rms_spread = float(np.sqrt(np.mean(spread[keep] ** 2))) if keep.any() else None
    rmse = float(np.sqrt(np.mean(error[keep] ** 2))) if keep.any() else None
    return {"spearman": spearman(spread[keep], error[keep]), "count": int(keep.sum()),
            "rms_spread": rms_spread, "rmse": rmse,
            "rmse_over_rms_spread": rmse / rms_spread if rms_spread else None,
            "bins": calibration_bins(spread[keep], error[keep], n_bins)}


# ---- 2. models -----------------------------------------------------------------------------------

@dataclass
class ModelOutput:
    """One model's predictions on every conformation of the data (eV, eV/Å, data order).

    member_energy (M, C) and member_forces (M, A, 3) for ensembles; `error` says why a model
    has no usable predictions (then its arrays are not to be trusted).
    """

    name: str
    path: str
    kind: str
    energy: np.ndarray
    forces: np.ndarray
    member_energy: Optional[np.ndarray] = None
    member_forces: Optional[np.ndarray] = None
    seconds: float = 0.0
    error: Optional[str] = None

    @property
    def members(self) -> int:
        return 1 if self.member_energy is None else int(self.member_energy.shape[0])


@dataclass
class ModelFile:
    """A model to evaluate: an exported file or a checkpoint, its name and its elements."""

    name: str
    path: Path
    exported: bool
    elements: List[int]
    kind: str
    members: int = 1
    module: Any = None       # the loaded TorchScript module or eager model
    metadata: Dict[str, Any] = field(default_factory=dict)


def is_exported(path: Path) -> bool:
    """True for a TorchScript file carrying ekd metadata (`<archive>/extra/ekd.json`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/ekd.json") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def open_model(path: Path, name: str) -> ModelFile:
    """Load an exported file (detected by its metadata) or an ekd checkpoint (a run folder
    holding checkpoint.pt is accepted too)."""
    from ase.data import atomic_numbers

    path = Path(path)
    if path.is_dir() and (path / "checkpoint.pt").exists():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if is_exported(path):
        from ekd.export import METADATA_NAME, parse_metadata

        extra = {METADATA_NAME: ""}
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as err:  # torch raises several types for damaged archives
            raise ModelFileError(f"{path}: not a loadable TorchScript file ({type(err).__name__})") from None
        meta = parse_metadata(extra[METADATA_NAME], path)
        return ModelFile(name, path, True, [atomic_numbers[s] for s in meta["elements"]], meta["model_kind"],
                         int(meta.get("members", 1)), module, meta)
    from ..models import Ensemble, load_model

    model = load_model(path)
    members = len(model.members) if isinstance(model, Ensemble) else 1
    return ModelFile(name, path, False, list(model.elements), model.kind, members, model)


def model_names(paths: Sequence[Path]) -> List[str]:
    """Short unique names: the file stem, or the folder of a checkpoint.pt (`student`,
    `teacher_0`); a name already taken gets its parent folders prefixed, then a number."""
    def name_at(p: Path, depth: int) -> str:
        p = Path(p)
        head = p.parent if p.name == "checkpoint.pt" else p
        parts = [head.name if head.is_dir() or p.name == "checkpoint.pt" else head.stem]
        parts += [q.name for q in head.parents][:depth]
        return "/".join(reversed([x for x in parts if x]))

    taken: List[str] = []
    for p in paths:
        candidates = [name_at(p, depth) for depth in range(3)]
        name = next((c for c in candidates if c not in taken), None)
        k = 2
        while name is None:
            name = f"{candidates[0]}#{k}" if f"{candidates[0]}#{k}" not in taken else None
            k += 1
        taken.append(name)
    return taken


def check_elements(model: ModelFile, data: AtomsData) -> None:
    """Refuse data with an element the model does not know, naming the element, the model and
    the first atom of it."""
    from ase.data import chemical_symbols

    unknown = sorted(set(data.elements) - set(model.elements))
    if not unknown:
        return
    z = unknown[0]
    atom = int(np.flatnonzero(data.species == z)[0])
    conf = int(data.conformation_of_atom[atom])
    known = " ".join(chemical_symbols[e] for e in model.elements)
    others = f" (and {', '.join(chemical_symbols[u] for u in unknown[1:])})" if len(unknown) > 1 else ""
    raise DataError(f"{data.source} has element {chemical_symbols[z]}{others} (first at atom "
                    f"{atom - int(data.offsets[conf])} of conformation {conf}), which model {model.name} "
                    f"({model.path}) does not know; it knows {known}")


def _species_index(species: np.ndarray, elements: List[int]) -> np.ndarray:
    lookup = np.full(max(max(elements), int(species.max())) + 1, -1, dtype=np.int64)
    lookup[np.asarray(elements)] = np.arange(len(elements))
    return lookup[species]


def _scatter_forces(grad: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, n: int) -> torch.Tensor:
    """Forces from edge gradients (CONTRACT.md §2): F_receiver += g, F_sender −= g; works on
    (E, 3) and on (M, E, 3) gradients (members along dim 0)."""
    grad = grad.detach().to(torch.float64)
    dim = grad.dim() - 2
    shape = list(grad.shape)
    shape[dim] = n
    forces = torch.zeros(shape, dtype=torch.float64)
    return forces.index_add(dim, receivers, grad).index_add(dim, senders, -grad)


def predict_exported(model: ModelFile, data: AtomsData, batch_size: int) -> ModelOutput:
    """Energies and forces of an exported file through the contract; ensembles also give
    every member's (the `members` method, called once per conformation because it sums the
    energies of all local atoms)."""
    meta, module = model.metadata, model.module
    dtype = getattr(torch, meta["dtype"])
    pairs = neighbor_pairs(data, float(meta["cutoff"]))
    species = torch.as_tensor(_species_index(data.species, model.elements))
    positions = torch.as_tensor(data.positions, dtype=torch.float64)
    shifts = None if pairs.shift is None else torch.as_tensor(pairs.shift, dtype=torch.float64)
    receivers_all = torch.as_tensor(pairs.receiver, dtype=torch.long)
    senders_all = torch.as_tensor(pairs.sender, dtype=torch.long)
    atom_offsets, pair_offsets = data.offsets, pairs.offsets
    n_conf = len(data)
    energy = np.zeros(n_conf)
    forces = np.zeros((data.n_total_atoms, 3))
    ensemble = model.kind == "ensemble"
    member_energy = np.zeros((model.members, n_conf)) if ensemble else None
    member_forces = np.zeros((model.members, data.n_total_atoms, 3)) if ensemble else None

    def graph(first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges of conformations [first, stop) with node indices counted from the first atom of `first`."""
        p0, p1 = int(pair_offsets[first]), int(pair_offsets[stop])
        local_start = torch.as_tensor(np.repeat(atom_offsets[first:stop] - atom_offsets[first],
                                                pairs.n_pairs[first:stop]), dtype=torch.long)
        receivers = receivers_all[p0:p1] + local_start
        senders = senders_all[p0:p1] + local_start
        a0 = int(atom_offsets[first])
        vectors = positions[a0 + senders] - positions[a0 + receivers]
        if shifts is not None:
            vectors = vectors + shifts[p0:p1]
        return vectors.to(dtype), receivers, senders

    for first in range(0, n_conf, batch_size):
        stop = min(first + batch_size, n_conf)
        a0, a1 = int(atom_offsets[first]), int(atom_offsets[stop])
        vectors, receivers, senders = graph(first, stop)
        _, atom_energy, edge_grad = module(vectors, receivers, senders, species[a0:a1], a1 - a0)
        conformation = np.repeat(np.arange(stop - first), data.n_atoms[first:stop])
        energy[first:stop] = np.bincount(conformation, weights=atom_energy.detach().double().numpy(),
                                         minlength=stop - first)
        forces[a0:a1] = _scatter_forces(edge_grad, receivers, senders, a1 - a0).numpy()
        if ensemble:
            for c in range(first, stop):
                c0, c1 = int(atom_offsets[c]), int(atom_offsets[c + 1])
                v, r, s = graph(c, c + 1)
                energies, grads = module.members(v, r, s, species[c0:c1], c1 - c0)
                member_energy[:, c] = energies.detach().double().numpy()
                member_forces[:, c0:c1] = _scatter_forces(grads, r, s, c1 - c0).numpy()
    return ModelOutput(model.name, str(model.path), model.kind, energy, forces, member_energy, member_forces)


def predict_checkpoint(model: ModelFile, data: AtomsData, batch_size: int) -> ModelOutput:
    """Energies and forces of a checkpoint's model with `predict_all`; a checkpointed
    ensemble is evaluated member by member."""
    from ..models import Ensemble
    from ..training import predict_all

    eager = model.module
    parts = list(eager.members) if isinstance(eager, Ensemble) else [eager]
    results = []
    for part in parts:
        dtype = next(part.parameters()).dtype
        graph = GraphData(data, part.elements, part.cutoff, dtype=dtype)
        results.append(predict_all(part, graph, np.arange(len(data)), batch_size=batch_size))
    if len(results) == 1:
        return ModelOutput(model.name, str(model.path), model.kind, results[0].energy, results[0].forces)
    member_energy = np.stack([r.energy for r in results])
    member_forces = np.stack([r.forces for r in results])
    return ModelOutput(model.name, str(model.path), "ensemble", member_energy.mean(axis=0),
                       member_forces.mean(axis=0), member_energy, member_forces)


def first_non_finite(output: ModelOutput, data: AtomsData) -> Optional[int]:
    """Index of the first conformation with a non-finite predicted energy or force, or None."""
    bad = ~np.isfinite(output.energy)
    bad_atoms = ~np.isfinite(output.forces).all(axis=1)
    bad |= np.bincount(data.conformation_of_atom, weights=bad_atoms, minlength=len(data)) > 0
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def describe_conformation(data: AtomsData, conformation: int, original: Optional[np.ndarray] = None) -> str:
    """'conformation 12 (molecule H2O, its conformation 3)' in the numbering of the file as read
    (`original`: the file's index of each conformation when only a subset is evaluated)."""
    group = int(data.group[conformation])
    if original is not None and not np.array_equal(original, np.arange(len(data))):
        return f"conformation {int(original[conformation])} (molecule {data.group_names[group]})"
    within = int(np.sum(data.group[:conformation] == group))
    return f"conformation {conformation} (molecule {data.group_names[group]}, its conformation {within})"


def evaluate_model(model: ModelFile, data: AtomsData, batch_size: int,
                   original: Optional[np.ndarray] = None) -> ModelOutput:
    """Predictions of one model; a model that fails or predicts NaN gets `error` set instead
    of stopping the evaluation of the others."""
    start = time.perf_counter()
    try:
        output = (predict_exported if model.exported else predict_checkpoint)(model, data, batch_size)
    except (RuntimeError, EkdError) as err:
        empty = np.full(len(data), np.nan)
        return ModelOutput(model.name, str(model.path), model.kind, empty, np.full((data.n_total_atoms, 3), np.nan),
                           error=f"model {model.name} ({model.path}) failed: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}")
    output.seconds = time.perf_counter() - start
    bad = first_non_finite(output, data)
    if bad is not None:
        n_bad = int(np.sum(~np.isfinite(output.energy)))
        output.error = (f"model {model.name} ({model.path}) predicts a non-finite energy or force on "
                        f"{describe_conformation(data, bad, original)} of {data.source}"
                        f" ({n_bad} of {len(data)} energies non-finite); its metrics are left out")
    return output


def ensemble_of(outputs: List[ModelOutput], name: str = "ensemble") -> ModelOutput:
    """The mean of several models' predictions, with each as a member (`--ensemble`)."""
    member_energy = np.stack([o.energy for o in outputs])
    member_forces = np.stack([o.forces for o in outputs])
    bad = [o.error for o in outputs if o.error]
    return ModelOutput(name, " + ".join(o.path for o in outputs), "ensemble", member_energy.mean(axis=0),
                       member_forces.mean(axis=0), member_energy, member_forces,
                       seconds=sum(o.seconds for o in outputs),
                       error=f"{name}: a member failed ({bad[0]})" if bad else None)


# ---- 3. the sign of the file's forces ---------------------------------------------------------------

@dataclass
class SignCheck:
    """What the forces sign check found: `method` is `finite-difference`, `model-cosine` or
    `none`; `slope` is the fitted factor in E₂ − E₁ = slope × (−½(F₁ + F₂)·(x₂ − x₁))
    (+1 for true forces, −1 for gradients)."""

    method: str = "none"
    pairs: int = 0
    slope: Optional[float] = None
    cosines: Dict[str, Optional[float]] = field(default_factory=dict)
    verdict: str = "not checked"


def trajectory_pairs(data: AtomsData, max_step: float = TRAJECTORY_STEP) -> np.ndarray:
    """(K, 2) consecutive conformations (c, c + 1) of the same molecule, with the same atoms
    in the same order, both with forces, no atom moving more than `max_step` Å."""
    if len(data) < 2 or data.forces is None:
        return np.zeros((0, 2), dtype=np.int64)
    has = data.has_forces
    candidates = np.flatnonzero((data.group[:-1] == data.group[1:]) & (data.n_atoms[:-1] == data.n_atoms[1:])
                                & has[:-1] & has[1:] & ~_periodic(data)[:-1])
    offsets = data.offsets
    kept = []
    for c in candidates:
        a, b = slice(offsets[c], offsets[c + 1]), slice(offsets[c + 1], offsets[c + 2])
        if not np.array_equal(data.species[a], data.species[b]):
            continue
        step = np.linalg.norm(data.positions[b] - data.positions[a], axis=1).max()
        if 0.0 < step <= max_step:
            kept.append(c)
    kept_arr = np.asarray(kept, dtype=np.int64)
    return np.stack([kept_arr, kept_arr + 1], axis=1)


def _periodic(data: AtomsData) -> np.ndarray:
    return data.pbc.any(axis=1) if data.pbc is not None else np.zeros(len(data), dtype=bool)


def finite_difference_slope(data: AtomsData, pairs: np.ndarray) -> Optional[float]:
    """Least-squares factor s in ΔE = s · W over the pairs, with W = −½(F₁ + F₂)·(x₂ − x₁) the
    work estimate of the trapezoid rule: s ≈ +1 when the file's forces are −dE/dx."""
    if len(pairs) == 0:
        return None
    offsets = data.offsets
    delta_e, work = [], []
    for c1, c2 in pairs:
        a, b = slice(offsets[c1], offsets[c1 + 1]), slice(offsets[c2], offsets[c2 + 1])
        dx = data.positions[b] - data.positions[a]
        work.append(float(-0.5 * np.sum((data.forces[a] + data.forces[b]) * dx)))
        delta_e.append(float(data.energy[c2] - data.energy[c1]))
    work_arr, delta = np.asarray(work), np.asarray(delta_e)
    denominator = float(work_arr @ work_arr)
    return float(work_arr @ delta / denominator) if denominator > 0 else None


def gradients_message(data: AtomsData, forces_sign: float, how: str) -> str:
    return (f"{data.source}: the file's forces look like gradients; rerun with --forces-sign "
            f"{-int(forces_sign):+d} ({how}; see docs/evaluate.md, 'The forces sign check')")


def check_sign_by_finite_differences(data: AtomsData, forces_sign: float = 1.0,
                                     max_step: float = TRAJECTORY_STEP) -> SignCheck:
    """The data-only check along trajectories; raises `DataError` when the forces are reversed."""
    pairs = trajectory_pairs(data, max_step)
    if len(pairs) < MIN_TRAJECTORY_PAIRS:
        return SignCheck(pairs=len(pairs), verdict="no trajectory in the file: checked against the models")
    slope = finite_difference_slope(data, pairs)
    check = SignCheck("finite-difference", len(pairs), slope)
    if slope is None:
        check.verdict = "inconclusive (no displacement along the forces)"
    elif slope < SIGN_FLIP_SLOPE:
        raise DataError(gradients_message(
            data, forces_sign, f"along {len(pairs)} pairs of consecutive conformations, E2 - E1 = {slope:.3g} x "
                               "(-1/2 (F1 + F2) . (x2 - x1)), where true forces give +1"))
    elif 0.5 <= slope <= 2.0:
        check.verdict = "ok"
    else:
        check.verdict = (f"sign ok, but the slope {slope:.3g} is far from 1: check the energy and force units")
    return check


def check_sign_by_models(check: SignCheck, outputs: List[ModelOutput], data: AtomsData,
                         forces_sign: float = 1.0) -> SignCheck:
    """When the file has no trajectory: if every evaluated model's forces point against the
    file's (cosine < −0.5), the file's forces are the ones reversed."""
    usable = [o for o in outputs if o.error is None]
    check.cosines = {o.name: force_cosine(o.forces, data.forces) for o in usable}
    decided = check.method == "finite-difference" and check.slope is not None
    if decided or data.forces is None or not data.has_forces.any():
        return check
    values = [c for c in check.cosines.values() if c is not None]
    if not values:
        check.verdict = "not checked (no trajectory in the file and no model with usable forces)"
        return check
    check.method = "model-cosine"
    if max(values) < SIGN_FLIP_COSINE:
        names = ", ".join(f"{n} {c:.2f}" for n, c in check.cosines.items() if c is not None)
        raise DataError(gradients_message(data, forces_sign, f"every model's forces point against the file's: "
                                                             f"cosine {names}"))
    check.verdict = (f"no sign flip seen (the highest model force cosine, {max(values):.2f}, is above "
                     f"{SIGN_FLIP_COSINE})")
    return check


# ---- 4. the report -----------------------------------------------------------------------------------

def model_metrics(output: ModelOutput, data: AtomsData, settings: EvaluationSettings) -> Dict[str, Any]:
    """Every metric of one model (eV, eV/Å, degrees)."""
    n_atoms = data.n_atoms.astype(np.float64)
    out: Dict[str, Any] = {
        "path": output.path, "kind": output.kind, "members": output.members, "ok": output.error is None,
        "error": output.error, "seconds": round(output.seconds, 3),
    }
    if output.error is not None:
        return out
    out["energy"] = error_stats(output.energy, data.energy)
    out["energy_per_atom"] = error_stats(output.energy / n_atoms, data.energy / n_atoms)
    out["relative_energy"] = relative_energy_errors(output.energy, data.energy, data.group)
    has_forces = data.forces is not None and data.has_forces.any()
    if has_forces:
        forces = error_stats(output.forces, data.forces)
        angles = force_angles(output.forces, data.forces, settings.min_force_for_angle)
        forces["angle_mean_deg"] = float(angles.mean()) if angles.size else None
        forces["angle_count"] = int(angles.size)
        forces["cosine"] = force_cosine(output.forces, data.forces)
        out["forces"] = forces
        out["forces_by_element"] = per_element_force_errors(output.forces, data.forces, data.species)
    else:
        out["forces"] = None
        out["forces_by_element"] = {}
    if output.member_energy is not None:
        out["uncertainty"] = ensemble_uncertainty(output, data, settings)
    return out


def ensemble_uncertainty(output: ModelOutput, data: AtomsData, settings: EvaluationSettings) -> Dict[str, Any]:
    """Spread of the members (energy: std of member energies; forces: per atom, the RMS over
    members of |F_m − F_mean|, as the ASE calculator reports it) against the ensemble's error."""
    energy_spread = output.member_energy.std(axis=0)
    result = {"energy": uncertainty_metrics(energy_spread, output.energy - data.energy, settings.calibration_bins),
              "forces": None}
    if data.forces is not None and data.has_forces.any():
        deviation = output.member_forces - output.forces[None]
        force_spread = np.sqrt(np.mean(np.sum(deviation ** 2, axis=-1), axis=0))
        force_error = np.linalg.norm(output.forces - data.forces, axis=1)  # NaN where no true forces
        result["forces"] = uncertainty_metrics(force_spread, force_error, settings.calibration_bins)
    return result


def _plots(outputs: List[ModelOutput], data: AtomsData, report: Dict[str, Any], out_dir: Path) -> Dict[str, str]:
    from .plots import axes_grid, parity_panel

    ok = [o for o in outputs if o.error is None]
    paths: Dict[str, str] = {}
    if not ok:
        return paths
    reference = relative_to_group_mean(data.energy, data.group)
    plt, fig, axes = axes_grid(len(ok))
    for ax, o in zip(axes, ok):
        parity_panel(ax, reference, relative_to_group_mean(o.energy, data.group), o.name, "eV")
    for ax in axes[len(ok):]:
        ax.axis("off")
    fig.suptitle("energies relative to each molecule's mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "energy_parity.png", dpi=110)
    plt.close(fig)
    paths["energy_parity"] = str(out_dir / "energy_parity.png")
    if data.forces is not None and data.has_forces.any():
        plt, fig, axes = axes_grid(len(ok))
        for ax, o in zip(axes, ok):
            parity_panel(ax, data.forces.ravel(), o.forces.ravel(), o.name, "eV/Å")
        for ax in axes[len(ok):]:
            ax.axis("off")
        fig.suptitle("force components", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "force_parity.png", dpi=110)
        plt.close(fig)
        paths["force_parity"] = str(out_dir / "force_parity.png")
    ensembles = [o for o in ok if o.member_energy is not None]
    if ensembles:
        paths["calibration"] = str(_calibration_plot(ensembles, report, out_dir / "calibration.png"))
    return paths


def _calibration_plot(ensembles: List[ModelOutput], report: Dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.5))
    for ax, key, unit in zip(axes, ("energy", "forces"), ("eV", "eV/Å")):
        top = 0.0
        for o in ensembles:
            u = report["models"][o.name]["uncertainty"][key]
            if not u or not u["bins"]:
                continue
            x = [b["rms_spread"] for b in u["bins"]]
            y = [b["rmse"] for b in u["bins"]]
            rho = "n/a" if u["spearman"] is None else f"{u['spearman']:.2f}"
            ax.plot(x, y, "o-", ms=4, label=f"{o.name} (ρ = {rho})")
            top = max(top, max(x), max(y))
        if top > 0:
            # Log axes: spreads of a poorly calibrated ensemble can be orders of magnitude below its errors.
            low = min(min(b["rms_spread"], b["rmse"]) for o in ensembles if report["models"][o.name]["uncertainty"][key]
                      for b in report["models"][o.name]["uncertainty"][key]["bins"])
            low = low if low > 0 else top * 1e-3
            ax.plot([low, top], [low, top], color="k", lw=0.8, ls="--", label="calibrated")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_title(f"{key}: error vs ensemble spread", fontsize=9)
        ax.set_xlabel(f"RMS spread in bin ({unit})", fontsize=8)
        ax.set_ylabel(f"RMSE in bin ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _milli(value: Optional[float]) -> str:
    return "—" if value is None else f"{value * 1e3:.2f}"


def _number(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_report(report: Dict[str, Any]) -> str:
    """report.json as tables (meV, meV/Å, degrees)."""
    d = report["data"]
    lines = [f"# Evaluation on {d['source']}", "",
             f"{d['conformations']} conformations ({d['conformations_with_forces']} with forces), "
             f"{d['molecules']} molecules, elements {' '.join(d['elements'])}.", "",
             f"Forces sign check: {report['sign_check']['method']}: {report['sign_check']['verdict']}.", "",
             "Energies in meV (per conformation, per atom, and relative to each molecule's mean), "
             "force components in meV/Å, angles between predicted and true forces in degrees.", "",
             "| model | E MAE | E RMSE | E/atom MAE | E/atom RMSE | rel. E MAE | rel. E RMSE | F MAE | F RMSE | "
             "F angle |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    failed = []
    for name, m in report["models"].items():
        if not m["ok"]:
            failed.append(m["error"])
            lines.append(f"| {name} | failed | | | | | | | | |")
            continue
        f = m["forces"] or {}
        lines.append(f"| {name} | {_milli(m['energy']['mae'])} | {_milli(m['energy']['rmse'])} | "
                     f"{_milli(m['energy_per_atom']['mae'])} | {_milli(m['energy_per_atom']['rmse'])} | "
                     f"{_milli(m['relative_energy']['mae'])} | {_milli(m['relative_energy']['rmse'])} | "
                     f"{_milli(f.get('mae'))} | {_milli(f.get('rmse'))} | {_number(f.get('angle_mean_deg'), 1)} |")
    elements = sorted({e for m in report["models"].values() if m["ok"] for e in m["forces_by_element"]})
    if elements:
        lines += ["", "Force component MAE / RMSE per element (meV/Å):", "",
                  "| model | " + " | ".join(elements) + " |", "|---|" + "---:|" * len(elements)]
        for name, m in report["models"].items():
            if m["ok"]:
                cells = [f"{_milli(m['forces_by_element'][e]['mae'])} / {_milli(m['forces_by_element'][e]['rmse'])}"
                         if e in m["forces_by_element"] else "—" for e in elements]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, m in report["models"].items():
        if not m["ok"] or "uncertainty" not in m:
            continue
        lines += ["", f"## Ensemble {name} ({m['members']} members): spread vs error", ""]
        for key, unit in (("energy", "meV"), ("forces", "meV/Å")):
            u = m["uncertainty"][key]
            if not u:
                continue
            lines += [f"{key}: Spearman ρ(spread, |error|) = {_number(u['spearman'])}, RMSE / RMS spread = "
                      f"{_number(u['rmse_over_rms_spread'])} over {u['count']} "
                      f"{'conformations' if key == 'energy' else 'atoms'}", "",
                      f"| spread range ({unit}) | RMS spread | RMSE | MAE | count |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {_milli(b['spread_min'])}–{_milli(b['spread_max'])} | {_milli(b['rms_spread'])} | "
                      f"{_milli(b['rmse'])} | {_milli(b['mae'])} | {b['count']} |" for b in u["bins"]]
            lines.append("")
    if failed:
        lines += ["", "## Failed models", ""] + [f"- {e}" for e in failed]
    return "\n".join(lines).rstrip() + "\n"


def _jsonable(value: Any) -> Any:
    """NaN / inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_report(outputs: List[ModelOutput], data: AtomsData, sign: SignCheck,
                 settings: EvaluationSettings) -> Dict[str, Any]:
    from ase.data import chemical_symbols

    return _jsonable({
        "units": {"energy": "eV", "forces": "eV/Angstrom", "angle": "degree"},
        "data": {"source": data.source, "conformations": len(data), "atoms": data.n_total_atoms,
                 "molecules": int(len(np.unique(data.group))),
                 "conformations_with_forces": int(data.has_forces.sum()),
                 "elements": [chemical_symbols[z] for z in data.elements]},
        "settings": {"min_force_for_angle": settings.min_force_for_angle,
                     "calibration_bins": settings.calibration_bins, "trajectory_step": settings.trajectory_step},
        "sign_check": {"method": sign.method, "pairs": sign.pairs, "slope": sign.slope,
                       "cosines": sign.cosines, "verdict": sign.verdict},
        "models": {o.name: model_metrics(o, data, settings) for o in outputs},
    })


def write_report(outputs: List[ModelOutput], data: AtomsData, sign: SignCheck, out_dir: Path,
                 settings: EvaluationSettings | None = None) -> Dict[str, Any]:
    """report.json, report.md and the plots in `out_dir`; returns the report."""
    settings = settings or EvaluationSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(outputs, data, sign, settings)
    report["plots"] = _plots(outputs, data, report, out_dir)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "report.md", markdown_report(report))
    return report


# ---- the whole evaluation -----------------------------------------------------------------------------

@dataclass
class EvaluationRequest:
    """Everything `python -m ekd.evaluate` was asked (see docs/evaluate.md)."""

    models: List[Path]
    data: Any                 # ekd.data.DataSpec
    out: Path = Path("evaluation")
    batch_size: int = 64
    ensemble: bool = False
    max_conformations: int = 0
    settings: EvaluationSettings = field(default_factory=EvaluationSettings)


def subset_for_speed(data: AtomsData, limit: int, seed: int = 0) -> tuple[AtomsData, np.ndarray]:
    """A sorted random subset of at most `limit` conformations (0: all), and their indices."""
    if limit <= 0 or limit >= len(data):
        return data, np.arange(len(data))
    ids = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    return data.subset(ids), ids


def run_evaluation(request: EvaluationRequest, say=print) -> Dict[str, Any]:
    """Read, check, evaluate and report. Bad input raises `EkdError` before anything is
    written; a model that fails is reported in the report instead."""
    from ..data import describe, read_data

    if not request.models:
        raise EkdError("no model given")
    if request.batch_size < 1:
        raise EkdError(f"--batch-size must be at least 1, got {request.batch_size}")
    data = read_data(request.data)
    say(describe(data))
    sign = SignCheck()
    if data.forces is not None and data.has_forces.any():
        sign = check_sign_by_finite_differences(data, request.data.forces_sign, request.settings.trajectory_step)
    models = [open_model(p, n) for p, n in zip(request.models, model_names(request.models))]
    for model in models:
        check_elements(model, data)
    data, original = subset_for_speed(data, request.max_conformations)
    outputs = []
    for model in models:
        output = evaluate_model(model, data, request.batch_size, original)
        status = output.error or f"{len(data)} conformations in {output.seconds:.1f} s"
        say(f"{model.name}: {'exported' if model.exported else 'checkpoint'} {model.kind}"
            f"{f' ({model.members} members)' if model.members > 1 else ''}: {status}")
        outputs.append(output)
    if request.ensemble:
        if len(outputs) < 2:
            raise EkdError("--ensemble needs at least two models (its members)")
        name = "ensemble" if "ensemble" not in {o.name for o in outputs} else "ensemble_of_models"
        outputs.append(ensemble_of(outputs, name))
    sign = check_sign_by_models(sign, outputs, data, request.data.forces_sign)
    return write_report(outputs, data, sign, request.out, request.settings)
