"""Is the file's `forces` array really −dE/dR? Some published files store gradients under that
name. Along a trajectory (consecutive conformations a small step apart) the trapezoid rule gives
E₂ − E₁ ≈ −½(F₁ + F₂)·(x₂ − x₁) for true forces; otherwise the models are the witness: if every
model's forces point against the file's, the file is what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..data import AtomsData
from ..errors import DataError
from .error_metrics import force_cosine
from .model_outputs import ModelOutput

TRAJECTORY_STEP = 0.1           # Å: largest atom displacement between consecutive conformations of a trajectory
MIN_TRAJECTORY_PAIRS = 3        # fewer pairs than this: the finite-difference check says nothing
SIGN_FLIP_SLOPE = -0.5          # finite-difference slope below this: the forces are gradients
SIGN_FLIP_COSINE = -0.8         # every model's force cosine below this: the forces are gradients
# (-0.8, not -0.5: a barely trained model can point against true forces, cosine -0.56 seen on
# the embedded data; a usable model on reversed forces gives about -0.9 or lower)


# ---- ---------------------------------------------------------------

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
    file's (cosine < −0.8), the file's forces are the ones reversed."""
    if data.forces is None or not data.has_forces.any():
        return check
    usable = [o for o in outputs if o.error is None]
    check.cosines = {o.name: force_cosine(o.forces, data.forces) for o in usable}
    if check.method == "finite-difference" and check.slope is not None:
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
