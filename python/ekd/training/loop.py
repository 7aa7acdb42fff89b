"""The training loop: Adam, learning-rate decay on plateau, early stopping, time limits,
an atomic checkpoint every epoch, and exact resumption after a kill.

Resumption is exact because everything that decides the next epoch is in the checkpoint
(weights, optimizer and scheduler state, best weights, history) and the shuffling of epoch
k is drawn from a generator seeded by (seed, k), not from a running random state.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..data import GraphData
from ..errors import EkdError
from ..models import Potential, model_spec, predict
from ..models.graph import scatter_sum
from ..fileio import atomic_torch_save, atomic_write_text
from ..models.io import CHECKPOINT_FORMAT, CHECKPOINT_NAME, CHECKPOINT_VERSION, METRICS_NAME, read_checkpoint
from .config import TrainConfig
from .floor import repulsion_onsets, shortest_pair_distances
from .losses import loss_terms, total_loss
from .progress import Progress


@dataclass
class TrainResult:
    """What training produced: the best model (loaded), where it is, and why training stopped."""

    model: Potential
    checkpoint: Path
    best_epoch: int
    best_val_loss: float
    epochs: int
    stop_reason: str
    train_seconds: float
    conformations_per_second: float
    history: List[Dict[str, Any]] = field(default_factory=list)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on weight matrices only: decaying biases, sensitivity centres or widths would
    pull physical length scales towards zero (a width at zero divides by zero)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


class Trainer:
    """Trains one model on one GraphData. `run()` resumes from `out_dir/checkpoint.pt` if present.

    `after_epoch`, if set, is called after every epoch's checkpoint (e.g. to stop when another
    process of a distributed run failed). `ekd.training.distributed.DistributedTrainer` is the
    same loop on several processes.
    """

    def __init__(self, model: Potential, graph: GraphData, train_ids: np.ndarray, val_ids: np.ndarray,
                 config: TrainConfig, out_dir: Path, seed: int, name: str = "model",
                 progress: bool = True) -> None:
        self.model, self.graph, self.config = model, graph, config
        self.train_ids, self.val_ids = np.asarray(train_ids), np.asarray(val_ids)
        self.out_dir, self.seed, self.name, self.show_progress = Path(out_dir), seed, name, progress
        self.needs_forces = config.forces_weight > 0
        self.needs_uncertainty = config.uncertainty_weight > 0
        # fused: one kernel over all parameters instead of a dozen operators per tensor (the demo
        # student's step: 1.9 -> 0.4 ms of ~18 ms, one thread; the same Adam update)
        self.optimizer = torch.optim.Adam(parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                                          fused=True)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience, threshold=1e-4)
        self.epoch = 0
        self.elapsed = 0.0
        self.best_val = math.inf
        self.best_epoch = -1
        self.best_state: Dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.history: List[Dict[str, Any]] = []
        self.stop_reason = ""
        self.after_epoch: Optional[Callable[[], None]] = None
        # the edge of the training data: deployed models warn closer than the shortest distance,
        # and the core repulsion (on by default) starts below each pair's shortest (`floor.py`)
        shortest = self._shortest_pair_distances()
        self.min_distance = float(shortest.min())
        if config.core_repulsion:
            model.core_repulsion.set_onsets(repulsion_onsets(shortest, model.elements))

    # ---- state ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def _state(self) -> Dict[str, Any]:
        dtype = next(self.model.parameters()).dtype
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "name": self.name,
            "model_spec": model_spec(self.model), "dtype": str(dtype).replace("torch.", ""),
            "model_state": self.model.state_dict(), "best_state": self.best_state,
            "best_epoch": self.best_epoch, "best_val_loss": self.best_val,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "elapsed": self.elapsed, "history": self.history,
            "train_config": asdict(self.config), "seed": self.seed,
            "data": {"min_distance": self.min_distance, "train_conformations": int(len(self.train_ids))},
            "finished": bool(self.stop_reason), "stop_reason": self.stop_reason,
        }

    def _shortest_pair_distances(self) -> np.ndarray:
        return shortest_pair_distances(self.graph, self.train_ids, self.model.n_species)

    def _saved_state(self) -> Optional[Dict[str, Any]]:
        """The checkpoint to resume from, if there is one."""
        return read_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def _restore(self, state: Dict[str, Any]) -> None:
        if state.get("model_spec", {}).get("hyperparameters") != model_spec(self.model).get("hyperparameters"):
            raise EkdError(f"{self.checkpoint_path}: this checkpoint was made with other model "
                           "hyperparameters than the config asks for; use a new run directory")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state["best_state"]
        self.best_epoch, self.best_val = state["best_epoch"], state["best_val_loss"]
        self.epoch, self.elapsed, self.history = state["epoch"], state["elapsed"], state["history"]
        self.stop_reason = state.get("stop_reason", "")

    def _save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self._state(), self.checkpoint_path)
        atomic_write_text(self.out_dir / METRICS_NAME, "".join(json.dumps(row) + "\n" for row in self.history))

    # ---- one epoch ----------------------------------------------------------------------------
    def _zeroth_order(self, batch: Any) -> torch.Tensor:
        reference = self.model.reference_tensor(batch.species.device)[batch.species]
        return scatter_sum(reference, batch.conformation, batch.n_conformations).to(batch.positions.dtype)

    def _epoch_generator(self) -> torch.Generator:
        """The generator of this epoch's shuffling: a function of (seed, epoch) only."""
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def _train_epoch(self) -> Dict[str, float]:
        self.model.train()
        generator = self._epoch_generator()
        sums: Dict[str, float] = {}
        n_batches = 0
        for batch in self.graph.batches(self.train_ids, self.config.batch_size, shuffle=True,
                                        generator=generator):
            prediction = predict(self.model, batch, forces=self.needs_forces, create_graph=self.needs_forces,
                                 uncertainty=self.needs_uncertainty)
            terms = loss_terms(prediction, batch, self.config, self._zeroth_order(batch))
            loss = total_loss(terms, self.config)
            if not torch.isfinite(loss):
                raise EkdError(f"{self.name}: the training loss became {loss.item()} at epoch {self.epoch}; "
                               "lower the learning rate or check the data for outliers")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            n_batches += 1
            for key, value in {"loss": loss, **terms}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        return {k: v / max(n_batches, 1) for k, v in sums.items()}

    def validation_loss(self) -> Dict[str, float]:
        """Weighted loss on the validation set (no regulariser), averaged over conformations; its
        `loss` leaves the uncertainty term out, so an uncertainty head never changes which
        epoch is best (the term is reported on its own)."""
        self.model.eval()
        sums: Dict[str, float] = {}
        total = 0
        for batch in self.graph.batches(self.val_ids, self.config.eval_batch_size):
            with torch.set_grad_enabled(self.needs_forces):
                prediction = predict(self.model, batch, forces=self.needs_forces, uncertainty=self.needs_uncertainty)
            terms = loss_terms(prediction, batch, self.config, None)
            terms = {k: v.detach() for k, v in terms.items()}
            terms["loss"] = total_loss({k: v for k, v in terms.items() if k != "uncertainty"}, self.config)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * batch.n_conformations
            total += batch.n_conformations
        return {k: v / max(total, 1) for k, v in sums.items()}

    # ---- the loop -------------------------------------------------------------------------------
    def _should_stop(self) -> str:
        c = self.config
        if self.epoch >= c.max_epochs:
            return f"reached max_epochs = {c.max_epochs}"
        if c.max_time and self.elapsed >= c.max_time:
            return f"reached max_time = {c.max_time:g} s"
        if c.early_stopping and self.epoch - self.best_epoch > c.early_stopping:
            return f"no validation improvement for {c.early_stopping} epochs"
        if self.optimizer.param_groups[0]["lr"] < c.min_lr:
            return f"learning rate fell below min_lr = {c.min_lr:g}"
        return ""

    def run(self, resume: bool = True) -> TrainResult:
        state = self._saved_state() if resume else None
        if state is not None:
            self._restore(state)
        bar = Progress(self.config.max_epochs, self.name, unit="epoch", enabled=self.show_progress,
                       initial=self.epoch)
        conformations_seen, seconds_training = 0, 0.0
        while not self.stop_reason:
            self.stop_reason = self._should_stop()
            if self.stop_reason:
                break
            start = time.perf_counter()
            with self.model.core_repulsion.skipping():  # exactly zero on every training conformation
                train = self._train_epoch()
            seconds = time.perf_counter() - start
            val = self.validation_loss()
            self.scheduler.step(val["loss"])
            self.epoch += 1
            self.elapsed += time.perf_counter() - start
            conformations_seen += len(self.train_ids)
            seconds_training += seconds
            if val["loss"] < self.best_val:
                self.best_val, self.best_epoch = val["loss"], self.epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
            self.history.append({"epoch": self.epoch, "time": round(self.elapsed, 3),
                                 "lr": self.optimizer.param_groups[0]["lr"],
                                 "train": train, "val": val,
                                 "conformations_per_s": len(self.train_ids) / max(seconds, 1e-9)})
            self.stop_reason = self._should_stop()
            self._save()
            bar.update(1, train=train["loss"], val=val["loss"], best=self.best_val,
                       lr=self.optimizer.param_groups[0]["lr"])
            if self.after_epoch is not None:
                self.after_epoch()
        bar.close()
        if not self.checkpoint_path.exists():
            self._save()
        self.model.load_state_dict(self.best_state)
        throughput = conformations_seen / seconds_training if seconds_training else float("nan")
        return TrainResult(model=self.model, checkpoint=self.checkpoint_path, best_epoch=self.best_epoch,
                           best_val_loss=self.best_val, epochs=self.epoch, stop_reason=self.stop_reason,
                           train_seconds=self.elapsed, conformations_per_second=throughput,
                           history=self.history)

