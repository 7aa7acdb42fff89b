"""The teachers' labels (labels.h5) of the tiny run equal the teachers recomputed directly."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ekd.config import load_config
from ekd.models import Ensemble, load_model
from ekd.run_directory import open_run
from ekd.training import predict_all


def test_labels_equal_direct_recomputation(tiny_run: Path) -> None:
    config = load_config(tiny_run.parent / "tiny.toml")
    run = open_run(tiny_run, config, progress=False)
    teachers = [load_model(tiny_run / f"teachers/teacher_{k}/checkpoint.pt") for k in range(2)]
    ids = np.array([0, 5, len(run.data) - 1])
    atoms = run.data.atom_indices(ids)
    preds = [predict_all(t, run.graph(t.cutoff), ids) for t in teachers]
    forces = np.stack([p.forces for p in preds])
    with h5py.File(tiny_run / "labels.h5") as h5:
        assert h5.attrs["complete"]
        assert np.allclose(h5["forces_mean"][()][atoms], forces.mean(axis=0), rtol=1e-10, atol=1e-12)
        spread = np.sqrt(np.mean(np.sum((forces - forces.mean(axis=0)) ** 2, axis=-1), axis=0))
        assert np.allclose(h5["forces_std"][()][atoms], spread, rtol=1e-8, atol=1e-10)
        atom_energy = np.mean([p.atom_energy for p in preds], axis=0)
        assert np.allclose(h5["atom_energy_mean"][()][atoms], atom_energy, rtol=1e-12)
        assert np.allclose(h5["energy_members"][()][ids], np.stack([p.energy for p in preds], 1), rtol=1e-12)
        assert np.abs(h5["forces_mean"][()]).max() > 1e-4, "labels must not be trivially zero"


def test_ensemble_mean_equals_mean_of_members(tiny_run: Path) -> None:
    teachers = [load_model(tiny_run / f"teachers/teacher_{k}/checkpoint.pt") for k in range(2)]
    ensemble = Ensemble(teachers)
    config = load_config(tiny_run.parent / "tiny.toml")
    run = open_run(tiny_run, config, progress=False)
    ids = np.arange(0, len(run.data), 97)
    graph = run.graph(ensemble.cutoff)
    mean = predict_all(ensemble, graph, ids)
    members = [predict_all(t, graph, ids) for t in teachers]
    assert np.allclose(mean.energy, np.mean([m.energy for m in members], axis=0), rtol=1e-12)
    assert np.allclose(mean.forces, np.mean([m.forces for m in members], axis=0), rtol=1e-10, atol=1e-12)
    summary = json.loads((tiny_run / "summary.json").read_text())
    test = run.split["test"]
    expected = predict_all(ensemble, graph, test)
    rmse = float(np.sqrt(np.mean((expected.energy - run.data.energy[test]) ** 2)))
    assert summary["models"]["ensemble"]["test"]["energy_rmse"] == pytest.approx(rmse, rel=1e-9)
