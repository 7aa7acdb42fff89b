"""A run directory with its saved config and the prepared data every stage shares; its paths
come from `ekd.run_layout.RunLayout`.

Under torchrun, rank 0 writes config.toml, split.json and references.json and the other ranks
read them (`write=False`); with `shard=(rank, world_size)` an HDF5 data set is read in
shards: each rank holds only its own contiguous block of conformations (`holding`).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .config import RunConfig, config_from_dict, config_to_toml
from .data import (AtomsData, GraphData, ReadReport, describe, fit_reference_energies, load_split, make_split,
                   read_data, residual_energy, save_split)
from .data.sharded import HDF5Source, Holding, balanced_ranges, is_hdf5, neighbor_pairs_in_chunks
from .errors import ConfigError, DataError
from .fileio import atomic_write_text
from .run_layout import RunLayout


@dataclass
class RunDirectory(RunLayout):
    """A run's paths (RunLayout) and its prepared data (read once per invocation)."""

    config: RunConfig
    data: AtomsData
    split: Dict[str, np.ndarray]
    elements: List[int]
    references: np.ndarray
    progress: bool = True
    log: List[str] = field(default_factory=list)
    holding: Optional[Holding] = None       # the conformations `data` holds (None: all of them)
    source: Optional[HDF5Source] = None     # the index of a data set read in shards
    rank: int = 0                           # this process's rank under torchrun
    _graphs: Dict[float, GraphData] = field(default_factory=dict)
    _fingerprint: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.run.dtype)

    # ---- data -------------------------------------------------------------------------------
    @property
    def held(self) -> Holding:
        """The conformations `data` holds, as global indices [start, stop)."""
        return self.holding if self.holding is not None else Holding(0, len(self.data), len(self.data))

    @property
    def all_n_atoms(self) -> np.ndarray:
        """(C,) atoms of every conformation of the data set, held here or not."""
        return self.source.n_atoms if self.source is not None else self.data.n_atoms

    def atom_offset(self, conformation: int) -> int:
        """Index of the first atom of a conformation (global) in the whole data set."""
        return int(np.sum(self.all_n_atoms[:conformation]))

    def fingerprint(self) -> str:
        """`ekd.distill.data_fingerprint` of the whole data set (streamed when read in shards)."""
        if not self._fingerprint:
            if self.source is not None:
                self._fingerprint = self.source.fingerprint()
            else:
                from .distill.labels import data_fingerprint

                self._fingerprint = data_fingerprint(self.data)
        return self._fingerprint

    def residual_energy(self) -> np.ndarray:
        """What the networks learn: energy minus the per-element reference part (eV, float64)."""
        return residual_energy(self.data, self.elements, self.references)

    def loss_weights(self) -> Optional[np.ndarray]:
        """(C,) each conformation's weight in every model's loss: `[data] added_weight` for those
        an active-learning round added, 1 for the original data; None when all weigh the same."""
        weight = self.config.data.added_weight
        if self.data.round is None or weight == 1.0 or not np.any(self.data.round > 0):
            return None
        return np.where(self.data.round > 0, weight, 1.0)

    def conformation_labels(self) -> Dict[str, np.ndarray]:
        """What every model learns per conformation: the residual energy (and the loss weight)."""
        labels = {"energy": self.residual_energy()}
        weights = self.loss_weights()
        if weights is not None:
            labels["weight"] = weights
        return labels

    def graph(self, cutoff: float, atom_labels: Dict[str, np.ndarray] | None = None) -> GraphData:
        """The data as a batchable graph for models with this cutoff (cached without extra labels)."""
        if atom_labels:
            return GraphData(self.data, self.elements, cutoff, self.dtype, self.config.run.device,
                             pairs=neighbor_pairs_in_chunks(self.data, cutoff),
                             conformation_labels=self.conformation_labels(), atom_labels=atom_labels)
        if cutoff not in self._graphs:
            self._graphs[cutoff] = GraphData(self.data, self.elements, cutoff, self.dtype, self.config.run.device,
                                             pairs=neighbor_pairs_in_chunks(self.data, cutoff),
                                             conformation_labels=self.conformation_labels())
        return self._graphs[cutoff]


def open_run(root: Path, config: RunConfig, progress: bool = True, write: bool = True,
             shard: Optional[Tuple[int, int]] = None) -> RunDirectory:
    """Create or reopen a run directory; the config must match the one it was started with.

    write=False: only read config.toml, split.json and references.json (another process —
    rank 0 — wrote them). shard=(rank, world_size): read an HDF5 data set in shards, holding
    only this rank's block of conformations (other formats are read whole)."""
    root = Path(root)
    layout = RunLayout(root)
    if write:
        root.mkdir(parents=True, exist_ok=True)
    _check_or_save_config(layout, config, write)
    report = ReadReport()
    if shard is not None and is_hdf5(config.data):
        return _open_sharded(layout, config, progress, write, shard, report)
    data = read_data(config.data, report)
    log = [describe(data)]
    if report.skipped_nan_energy:
        log.append(f"skipped {report.skipped_nan_energy} conformations whose energy is NaN")
    split = _split(layout, data, config, write)
    log.append("split: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    if data.round is not None and np.any(data.round > 0):
        rounds = [str(r) for r in np.unique(data.round[data.round > 0])]
        log.append(f"{int(np.sum(data.round > 0))} conformations added by active learning (round"
                   f"{'s' if len(rounds) > 1 else ''} {', '.join(rounds)}); they weigh "
                   f"{config.data.added_weight:g} in every loss ([data] added_weight)")
    elements = data.elements
    references = _references(layout, elements, config, write, data.source,
                             lambda: fit_reference_energies(data.subset(split["train"]), elements))
    return RunDirectory(root=root, config=config, data=data, split=split, elements=elements,
                        references=references, progress=progress, log=log)


def _open_sharded(layout: RunLayout, config: RunConfig, progress: bool, write: bool, shard: Tuple[int, int],
                  report: ReadReport) -> RunDirectory:
    """The run with only this rank's conformations in memory; split and references come from
    the file's index (sizes and energies), so they are those of a whole-file read."""
    rank, world_size = shard
    if config.data.additions:
        raise ConfigError("[data] additions cannot be read in shards yet; run without torchrun, or with "
                          "[run] parallel = \"teachers\"")
    if config.data.added_weight != 1.0:
        raise ConfigError("[data] added_weight is not applied to data read in shards yet; run without torchrun, "
                          "or with [run] parallel = \"teachers\"")
    source = HDF5Source(config.data, report)
    log = [source.describe()]
    if report.skipped_nan_energy:
        log.append(f"skipped {report.skipped_nan_energy} conformations whose energy is NaN")
    split = _split(layout, source, config, write)  # type: ignore[arg-type]  (the index has len, has_forces, source)
    log.append("split: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    elements = source.elements
    references = _references(layout, elements, config, write, source.source,
                             lambda: source.fit_reference_energies(split["train"], elements))
    start, stop = balanced_ranges(source.n_atoms, world_size)[rank]
    data = source.read(start, stop)
    log.append(f"{world_size} ranks, each holding about {len(source) // world_size} conformations")
    return RunDirectory(root=layout.root, config=config, data=data, split=split, elements=elements,
                        references=references, progress=progress, log=log,
                        holding=Holding(start, stop, len(source)), source=source)


def _check_or_save_config(layout: RunLayout, config: RunConfig, write: bool = True) -> None:
    path = layout.config_path
    text = config_to_toml(config)
    if not path.exists() and not write:
        raise ConfigError(f"{path} is missing (rank 0 writes it before the other ranks read it)")
    if path.exists():
        # keys this ekd added since the run began take their defaults, so an older run resumes
        saved = tomllib.loads(config_to_toml(config_from_dict(tomllib.loads(path.read_text()), str(path))))
        current = tomllib.loads(text)
        for table in (saved, current):  # speed-only settings may change between invocations
            table.get("run", {}).pop("threads", None)
            table.get("run", {}).pop("parallel", None)
        if saved != current:
            diff = _first_difference(saved, current)
            raise ConfigError(f"{path}: this run was started with a different configuration ({diff}); "
                              "use the same config, or a new --out directory")
        return
    atomic_write_text(path, text)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        where = f"{prefix}.{key}" if prefix else key
        if key not in a or key not in b:
            return f"{where} is only in {'the saved' if key in a else 'the new'} config"
        if isinstance(a[key], dict) and isinstance(b[key], dict):
            found = _first_difference(a[key], b[key], where)
            if found:
                return found
        elif a[key] != b[key]:
            return f"{where}: saved {a[key]!r}, now {b[key]!r}"
    return ""


def _split(layout: RunLayout, data: AtomsData, config: RunConfig, write: bool = True) -> Dict[str, np.ndarray]:
    path = layout.split_path
    if path.exists() or not write:
        return load_split(path, len(data))
    split = make_split(data, config.split)
    save_split(split, path)
    return split


def _references(layout: RunLayout, elements: List[int], config: RunConfig, write: bool, source: str,
                fit: Callable[[], np.ndarray]) -> np.ndarray:
    """The saved reference energies, else fixed ones or `fit()` (least squares on the training split)."""
    from ase.data import atomic_numbers, chemical_symbols

    path = layout.references_path
    if path.exists() or not write:
        saved = json.loads(path.read_text())
        return np.array([saved[chemical_symbols[z]] for z in elements])
    if config.references.mode == "fixed":
        values = config.references.values
        missing = [chemical_symbols[z] for z in elements if chemical_symbols[z] not in values]
        if missing:
            raise ConfigError(f"[references] values lack element(s) {', '.join(missing)}")
        unknown = [s for s in values if s not in atomic_numbers]
        if unknown:
            raise ConfigError(f"[references] values: unknown element symbol(s) {', '.join(unknown)}")
        references = np.array([float(values[chemical_symbols[z]]) for z in elements])
    else:
        references = fit()
    if not np.all(np.isfinite(references)):
        raise DataError(f"{source}: reference energies are not finite")
    atomic_write_text(path, json.dumps({chemical_symbols[z]: float(v) for z, v in zip(elements, references)},
                                       indent=1))
    return references
