"""Evaluation metrics against values computed by hand on small arrays, and the finite-difference
forces sign check on a constructed harmonic trajectory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ekd.data import AtomsData
from ekd.errors import DataError
from ekd.evaluate.error_metrics import (average_ranks, calibration_bins, error_stats, force_angles, force_cosine,
                                          per_element_force_errors, relative_energy_errors, relative_to_group_mean,
                                          spearman, uncertainty_metrics)
from ekd.evaluate.force_sign import check_sign_by_finite_differences, finite_difference_slope, trajectory_pairs


def test_mae_rmse_skip_missing_references() -> None:
    stats = error_stats(np.array([1.0, 2.0, 3.0, 100.0]), np.array([1.0, 1.0, 5.0, np.nan]))
    # differences 0, 1, -2 (the NaN reference is "no label")
    assert stats["mae"] == pytest.approx(1.0)
    assert stats["rmse"] == pytest.approx(math.sqrt(5.0 / 3.0))
    assert stats["count"] == 3


def test_relative_energies_within_each_molecule() -> None:
    group = np.array([0, 0, 1, 1, 2])
    reference = np.array([10.0, 12.0, 100.0, 104.0, 7.0])
    prediction = np.array([11.0, 11.0, 101.0, 103.0, 50.0])
    assert np.allclose(relative_to_group_mean(reference, group), [-1, 1, -2, 2, 0])
    stats = relative_energy_errors(prediction, reference, group)
    # relative prediction 0, 0, -1, 1 against -1, 1, -2, 2; molecule 2 has one conformation and is left out
    assert stats["mae"] == pytest.approx(1.0)
    assert stats["rmse"] == pytest.approx(1.0)
    assert (stats["count"], stats["molecules"]) == (4, 2)
    # a constant offset per molecule is no error in relative energies
    shifted = reference + np.array([3.0, 3.0, -8.0, -8.0, 1.0])
    assert relative_energy_errors(shifted, reference, group)["rmse"] == pytest.approx(0.0, abs=1e-12)


def test_force_angles_and_cosine() -> None:
    reference = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0.01], [0, 0, 1.0], [np.nan, 0, 0]])
    prediction = np.array([[1.0, 1.0, 0], [0, -3.0, 0], [5.0, 0, 0], [0, 0, 0], [1.0, 0, 0]])
    # 45°, 180°, (true force below 0.05 eV/Å: skipped), zero prediction: 90°, (no true force: skipped)
    assert np.allclose(force_angles(prediction, reference, min_force=0.05), [45.0, 180.0, 90.0])
    assert force_cosine(-reference, reference) == pytest.approx(-1.0)
    assert force_cosine(2.0 * reference, reference) == pytest.approx(1.0)
    # hand value: dot = 1 - 6 + 0 + 0 = -5 over |p| |r| (finite rows only)
    p, r = prediction[:4].ravel(), reference[:4].ravel()
    assert force_cosine(prediction, reference) == pytest.approx(-5.0 / (np.linalg.norm(p) * np.linalg.norm(r)))


def test_per_element_force_errors() -> None:
    species = np.array([1, 1, 8])
    reference = np.zeros((3, 3))
    prediction = np.array([[0.1, 0, 0], [0, 0.3, 0], [0, 0, -0.6]])
    out = per_element_force_errors(prediction, reference, species)
    assert set(out) == {"H", "O"}
    assert out["H"]["mae"] == pytest.approx(0.4 / 6)
    assert out["H"]["rmse"] == pytest.approx(math.sqrt(0.1 / 6))
    assert out["H"]["count"] == 2
    assert out["O"]["mae"] == pytest.approx(0.2)
    assert out["O"]["rmse"] == pytest.approx(math.sqrt(0.36 / 3))


def test_ranks_and_spearman() -> None:
    assert np.allclose(average_ranks(np.array([10.0, 20.0, 20.0, 5.0])), [2.0, 3.5, 3.5, 1.0])
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # y ranks 1, 2, 3.5, 5, 3.5: ρ = Σ dx dy / sqrt(Σ dx² Σ dy²) = 8 / sqrt(10 × 9.5)
    assert spearman(x, np.array([5.0, 6.0, 7.0, 8.0, 7.0])) == pytest.approx(8.0 / math.sqrt(95.0))
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)       # monotonic, not linear: still 1
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert spearman(x, np.ones(5)) is None                     # no ranking in a constant
    assert spearman(x[:2], x[:2]) is None                      # too few pairs
    assert spearman(np.array([1.0, 2.0, np.nan, 4.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(1.0)


def test_calibration_bins() -> None:
    spread = np.array([0.4, 0.1, 0.3, 0.2])
    error = np.array([-0.4, -0.1, 0.0, 0.3])      # signed: the absolute value is what counts
    bins = calibration_bins(spread, error, n_bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    low, high = bins
    assert (low["spread_min"], low["spread_max"]) == (0.1, 0.2)
    assert low["rms_spread"] == pytest.approx(math.sqrt(0.025))
    assert low["rmse"] == pytest.approx(math.sqrt(0.05))
    assert low["mae"] == pytest.approx(0.2)
    assert high["rms_spread"] == pytest.approx(math.sqrt(0.125))
    assert high["rmse"] == pytest.approx(math.sqrt(0.08))
    assert high["mae"] == pytest.approx(0.2)
    assert len(calibration_bins(spread[:1], error[:1], n_bins=5)) == 1
    summary = uncertainty_metrics(spread, error, n_bins=2)
    assert summary["rmse_over_rms_spread"] == pytest.approx(math.sqrt(0.26 / 4) / math.sqrt(0.30 / 4))
    assert summary["spearman"] == pytest.approx(spearman(spread, np.abs(error)))


def harmonic_trajectory(steps: int = 12, sign: float = 1.0, step_size: float = 0.01) -> AtomsData:
    """A water molecule with harmonic O–H bonds moving in small steps; forces × `sign`."""
    k, r0 = 20.0, 0.96
    base = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    direction = np.random.default_rng(1).normal(size=(3, 3))
    positions, energies, forces = [], [], []
    for t in range(steps):
        x = base + 0.2 * np.sin(step_size * t / 0.2) * direction
        energy, force = 0.0, np.zeros((3, 3))
        for h in (1, 2):
            d = x[h] - x[0]
            r = np.linalg.norm(d)
            energy += k * (r - r0) ** 2
            f = -2.0 * k * (r - r0) * d / r
            force[h] += f
            force[0] -= f
        positions.append(x)
        energies.append(energy)
        forces.append(sign * force)
    return AtomsData(species=np.tile([8, 1, 1], steps), positions=np.concatenate(positions),
                     n_atoms=np.full(steps, 3), energy=np.array(energies), forces=np.concatenate(forces),
                     source="harmonic.xyz")


def test_finite_difference_sign_check() -> None:
    good = harmonic_trajectory()
    pairs = trajectory_pairs(good)
    assert len(pairs) == 11 and np.array_equal(pairs[0], [0, 1])
    assert finite_difference_slope(good, pairs) == pytest.approx(1.0, abs=0.02)
    assert check_sign_by_finite_differences(good).verdict == "ok"
    gradients = harmonic_trajectory(sign=-1.0)
    assert finite_difference_slope(gradients, trajectory_pairs(gradients)) == pytest.approx(-1.0, abs=0.02)
    with pytest.raises(DataError, match=r"harmonic.xyz: the file's forces look like gradients; rerun with "
                                        r"--forces-sign -1"):
        check_sign_by_finite_differences(gradients)
    # big steps are no trajectory: the check leaves the decision to the models
    far = harmonic_trajectory(step_size=0.5)
    assert len(trajectory_pairs(far)) == 0
    assert check_sign_by_finite_differences(far).method == "none"


def test_roc_auc_is_the_fraction_of_correctly_ordered_pairs() -> None:
    from ekd.evaluate.error_metrics import roc_auc, uncertainty_metrics

    rng = np.random.default_rng(5)
    score = rng.integers(0, 6, size=40).astype(float)  # ties count half
    positive = rng.random(40) < 0.3
    pairs = [(a, b) for a in score[positive] for b in score[~positive]]
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert roc_auc(score, positive) == pytest.approx(brute, rel=1e-12)
    assert roc_auc(score, np.zeros(40, bool)) is None
    error = rng.random(200)
    assert uncertainty_metrics(error, error)["auc_worst_10pct"] == pytest.approx(1.0)
    assert uncertainty_metrics(-error, error)["auc_worst_10pct"] == pytest.approx(0.0)


def test_member_deviation_and_the_fitted_uncertainty_scale() -> None:
    """The ensemble's per-atom deviation by its definition, and the validation scale s that makes
    RMS(s·u) equal the RMS true force error on the atoms that have true forces."""
    from ekd.distill.labels import member_force_deviation
    from ekd.evaluate.metrics_table import fit_uncertainty_scale
    from ekd.training import Predictions

    rng = np.random.default_rng(3)
    members = rng.normal(size=(4, 6, 3))
    expected = [math.sqrt(np.mean([np.sum((m[a] - members[:, a].mean(axis=0)) ** 2) for m in members]))
                for a in range(6)]
    assert np.allclose(member_force_deviation(members), expected, rtol=1e-12)

    data = AtomsData(species=np.array([1, 8, 1, 6, 1, 1]), positions=rng.normal(size=(6, 3)),
                     n_atoms=np.array([3, 3]), energy=np.zeros(2), forces=rng.normal(size=(6, 3)))
    data.forces[3:] = np.nan  # the second conformation has no true forces
    predicted = data.forces + rng.normal(scale=0.3, size=(6, 3))
    uncertainty = rng.uniform(0.1, 1.0, size=6)
    prediction = Predictions(ids=np.array([0, 1]), energy=np.zeros(2), atom_energy=np.zeros(6),
                             forces=predicted, uncertainty=uncertainty)
    scale = fit_uncertainty_scale(prediction, data)
    error = np.linalg.norm(predicted[:3] - data.forces[:3], axis=1)
    assert np.sqrt(np.mean((scale * uncertainty[:3]) ** 2)) == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-12)
    no_forces = Predictions(ids=np.array([1]), energy=np.zeros(1), atom_energy=np.zeros(3), forces=predicted[3:],
                            uncertainty=uncertainty[3:])
    assert fit_uncertainty_scale(no_forces, data) is None
