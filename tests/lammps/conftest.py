"""Shared by the LAMMPS tests: the periodic test box and helpers that make model files (random
weights, changed metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.config import load_config
from ekd.export import read_metadata
from ekd.run_directory import open_run


def random_checkpoint(template: Path, folder: Path, kind: str, hyperparameters: dict) -> Path:
    """A model with random (not trained) weights in a checkpoint of the tiny run's format: LAMMPS
    must reproduce any weights, and random ones give large forces."""
    from ekd.models import build_model
    from ekd.models.registry import model_spec
    from ekd.training import read_checkpoint

    state = read_checkpoint(template)
    torch.manual_seed(7)
    model = build_model(kind, state["model_spec"]["elements"], hyperparameters).double()
    if "core_repulsion" in state["model_spec"]:  # the floor a trained model of these data has
        model.core_repulsion.set_onsets(state["model_spec"]["core_repulsion"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state.update(model_spec=model_spec(model), best_state=model.state_dict(), dtype="float64")
    path = folder / f"{kind}_{hyperparameters['n_interactions']}.pt.checkpoint"
    torch.save(state, path)
    return path


def with_metadata(path: Path, out: Path, module: torch.jit.ScriptModule | None = None, **changes: object) -> str:
    """A copy of an exported file (or `module` with its metadata) with some metadata entries changed."""
    import json

    from ekd.export import METADATA_NAME

    meta = {**json.loads(read_metadata(path).to_json()), **changes}
    module = torch.jit.load(str(path)) if module is None else module
    torch.jit.save(module, str(out), _extra_files={METADATA_NAME: json.dumps(meta)})
    return str(out)


@pytest.fixture(scope="module")
def box(tiny_run: Path) -> Atoms:
    """A periodic 2x2x2 grid of test-split molecules, close enough to interact across the box
    (nearest atoms of two molecules 1.04 Å apart: closer, at 4.2 Å spacing, an H–H pair sat at
    0.69 Å, deep in the models' core repulsion, and every MD test began with a collision)."""
    run = open_run(tiny_run, load_config(tiny_run.parent / "tiny.toml"), progress=False)
    rng = np.random.default_rng(0)
    symbols, positions, spacing = [], [], 4.6
    offsets = run.data.offsets
    for k, corner in enumerate(np.ndindex(2, 2, 2)):
        conf = run.split["test"][k % len(run.split["test"])]
        x = run.data.positions[offsets[conf]:offsets[conf + 1]]
        x = (x - x.mean(axis=0)) @ _rotation(rng)
        positions.append(x + spacing * (np.array(corner) + 0.5))
        symbols += list(Atoms(numbers=run.data.species[offsets[conf]:offsets[conf + 1]]).get_chemical_symbols())
    return Atoms(symbols, positions=np.concatenate(positions), cell=[2 * spacing] * 3, pbc=True)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q
