"""Run models on a data set. Exported TorchScript files go through the deployment contract
(export/CONTRACT.md: one disjoint graph per batch, every atom a local node, forces from
`edge_grad`), so what is evaluated is exactly what LAMMPS and ASE run; training checkpoints go
through `predict_all`. Every model yields the same `ModelOutput`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch

from ..data import AtomsData, GraphData, neighbor_pairs
from ..errors import DataError, EkdError, ModelFileError
from ..export import is_exported, load_exported
from ..models.io import CHECKPOINT_NAME

# ---- -----------------------------------------------------------------------------------

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
    atom_uncertainty: Optional[np.ndarray] = None   # (A,) eV/Å: a model's own uncertainty output
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
    module: Any = None       # the loaded ExportedModel or eager model


def open_model(path: Path, name: str) -> ModelFile:
    """Load an exported file (detected by its metadata) or an ekd checkpoint (a run folder
    holding checkpoint.pt is accepted too)."""
    from ase.data import atomic_numbers

    path = Path(path)
    if path.is_dir() and (path / CHECKPOINT_NAME).exists():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if is_exported(path):
        exported = load_exported(path)
        meta = exported.metadata
        return ModelFile(name, path, True, [atomic_numbers[s] for s in meta.elements], meta.model_kind,
                         meta.members, exported)
    from ..models import Ensemble, load_model

    model = load_model(path)
    members = len(model.members) if isinstance(model, Ensemble) else 1
    return ModelFile(name, path, False, list(model.elements), model.kind, members, model)


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


def predict_exported(model: ModelFile, data: AtomsData, batch_size: int) -> ModelOutput:
    """Energies and forces of an exported file through the contract; ensembles also give
    every member's (the `members` method, called once per conformation because it sums the
    energies of all local atoms)."""
    exported = model.module
    dtype = exported.metadata.torch_dtype
    pairs = neighbor_pairs(data, exported.metadata.cutoff)
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
    own = exported.metadata.atom_uncertainty
    atom_uncertainty = np.zeros(data.n_total_atoms) if own else None

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
        out = exported.evaluate(vectors, receivers, senders, species[a0:a1], a1 - a0, uncertainty=own)
        conformation = np.repeat(np.arange(stop - first), data.n_atoms[first:stop])
        energy[first:stop] = np.bincount(conformation, weights=out.atom_energy.numpy(), minlength=stop - first)
        forces[a0:a1] = out.forces.numpy()
        if atom_uncertainty is not None:
            atom_uncertainty[a0:a1] = out.atom_uncertainty.numpy()
        if ensemble:
            for c in range(first, stop):
                c0, c1 = int(atom_offsets[c]), int(atom_offsets[c + 1])
                v, r, s = graph(c, c + 1)
                members = exported.evaluate_members(v, r, s, species[c0:c1], c1 - c0)
                member_energy[:, c] = members.energies.numpy()
                member_forces[:, c0:c1] = members.forces.numpy()
    return ModelOutput(model.name, str(model.path), model.kind, energy, forces, member_energy, member_forces,
                       atom_uncertainty)


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
        return ModelOutput(model.name, str(model.path), model.kind, results[0].energy, results[0].forces,
                           atom_uncertainty=results[0].uncertainty)
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
