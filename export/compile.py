"""Checkpoint(s) → one verified TorchScript file: the single export entry point.

The file is written to a temporary name, loaded back, and its outputs compared with the eager
model's on sample structures; only a file that agrees (1e-12 relative in float64, 1e-5 in
float32) is renamed into place.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ekd.errors import ModelFileError
from ekd.fileio import file_sha256
from ekd.models import Ensemble, Potential, model_from_checkpoint, read_checkpoint

from .blocks import BLOCK_EDGES, WHOLE_EDGES
from .metadata import METADATA_NAME, Metadata, make_metadata
from .module import chain_layers, deploy
from .samples import sample_graphs

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def load_for_export(checkpoints: Sequence[Path], dtype: torch.dtype) -> tuple[Potential, List[str], float]:
    """The model (an Ensemble when several checkpoints), its checkpoint hashes and the shortest
    training distance."""
    models, hashes, shortest = [], [], math.inf
    for path in checkpoints:
        state = read_checkpoint(Path(path))
        models.append(model_from_checkpoint(state).to(dtype))
        hashes.append(file_sha256(Path(path)))
        shortest = min(shortest, float(state.get("data", {}).get("min_distance", 0.0)))
    model = models[0] if len(models) == 1 else Ensemble(models).eval()
    return model, hashes, shortest if math.isfinite(shortest) else 0.0


def export_model(checkpoints: Sequence[Path], out: Path, dtype: torch.dtype = torch.float64,
                 whole_edges: int = WHOLE_EDGES, block_edges: int = BLOCK_EDGES) -> Metadata:
    """Export one checkpoint, or several as an ensemble, to `out`; returns the metadata. A
    layered model evaluates graphs of more than `whole_edges` edges in blocks of `block_edges`."""
    if not checkpoints:
        raise ModelFileError("nothing to export: no checkpoint given")
    model, hashes, min_distance = load_for_export(checkpoints, dtype)
    metadata = make_metadata(model, dtype, hashes, min_distance)
    eager = deploy(model, whole_edges, block_edges)
    scripted = torch.jit.script(eager)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_NAME: metadata.to_json()})
        # run as the pair style runs it, without TorchScript's profiling and graph optimiser: the
        # first calls of each method would otherwise compile for seconds, and the numbers are the same
        with torch.jit.optimized_execution(False):
            verify(eager, torch.jit.load(str(tmp)), model, dtype)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return metadata


def verify(eager: torch.nn.Module, loaded: torch.jit.ScriptModule, model: Potential, dtype: torch.dtype) -> None:
    """Refuse an export whose saved file disagrees with the eager model on sample structures:
    forward (and an ensemble's members), the layer chain, and the uncertainty output."""
    tolerance = TOLERANCE[dtype]
    samples = sample_graphs(model.n_species, model.cutoff)
    for k, g in enumerate(samples):
        args = (g.edge_vectors.to(dtype), g.receivers, g.senders, g.species, g.n_local)
        expected = eager(*args)
        got = loaded(*args)
        names = ["energy", "atom_energy", "edge_grad"]
        if hasattr(eager, "members"):  # ensembles: every member's energies and gradients too
            expected, got = list(expected) + list(eager.members(*args)), list(got) + list(loaded.members(*args))
            names += ["member energies", "member edge_grad"]
        for name, a, b in zip(names, expected, got):
            _check(k, f"{name} of the saved file differs from the eager model", a, b, tolerance)
        chained = None
        if hasattr(eager, "layer"):  # the layers chained, and run in blocks, must give forward's results
            whole = eager.whole(g.edge_vectors.to(dtype), g.receivers, g.senders, g.species, len(g.species))
            chained = chain_layers(loaded, model.num_interactions, g.edge_vectors.to(dtype), g.receivers,
                                   g.senders, g.species)
            chained_apart = chain_layers(loaded, model.num_interactions, g.edge_vectors.to(dtype), g.receivers,
                                         g.senders, g.species, apart=True)
            for name, a, b, c in zip(["atom_energy", "edge_grad"], whole[1:], chained, chained_apart):
                _check(k, f"layer-by-layer {name} differs from forward", a, b, tolerance)
                _check(k, f"layer-by-layer {name} (edge features apart) differs from forward", a, c, tolerance)
            if k == len(samples) - 1:  # the periodic box, cut into about three blocks (each costs time)
                block_edges = max(1, (int(g.receivers.shape[0]) + 2) // 3)
                blocked = loaded.in_blocks(g.edge_vectors.to(dtype), g.receivers, g.senders, g.species,
                                           len(g.species), block_edges)
                for name, a, b in zip(["atom_energy", "edge_grad"], whole[1:], blocked[1:3]):
                    _check(k, f"{name} in blocks differs from forward", a, b, tolerance)
        if hasattr(eager, "forward_with_uncertainty"):
            _verify_uncertainty(k, eager, loaded, args, chained, tolerance)


def _verify_uncertainty(k: int, eager: torch.nn.Module, loaded: torch.jit.ScriptModule, args: tuple,
                        chained: Optional[tuple], tolerance: float) -> None:
    """The uncertainty of the saved file equals the eager model's, also from the layer chain."""
    if not hasattr(loaded, "forward_with_uncertainty"):
        raise ModelFileError(f"export check failed on sample structure {k}: the saved file has no "
                             "forward_with_uncertainty; nothing was written")
    expected = eager.forward_with_uncertainty(*args)
    got = loaded.forward_with_uncertainty(*args)
    _check(k, "atom_uncertainty of the saved file differs from the eager model", expected[3], got[3], tolerance)
    if chained is not None:
        if len(chained) < 3:
            raise ModelFileError(f"export check failed on sample structure {k}: the saved file has no "
                                 "atom_uncertainty for the layer path; nothing was written")
        _check(k, "layer-by-layer atom_uncertainty differs from forward", expected[3], chained[2], tolerance)


def _check(k: int, what: str, expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> None:
    scale = max(float(expected.abs().max()), 1e-30) if expected.numel() else 1.0
    error = float((expected - got).abs().max()) / scale if expected.numel() else 0.0
    if not math.isfinite(error) or error > tolerance:
        raise ModelFileError(f"export check failed on sample structure {k}: {what} by {error:.3g} (relative), "
                             f"more than {tolerance:g}; nothing was written")
