"""Training settings (the `[teachers.train]` and `[student.train]` tables of a run config)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class TrainConfig:
    """How one model is trained.

    max_epochs:         upper limit on epochs.
    max_time:           upper limit on training wall time in seconds (0 = none), summed over resumes.
    batch_size:         conformations per batch.
    learning_rate:      initial Adam learning rate.
    weight_decay:       L2 penalty on weight matrices (biases and length scales are not decayed).
    lr_factor:          learning-rate decay factor on a validation plateau.
    lr_patience:        epochs without improvement before the learning rate decays.
    min_lr:             training stops when the learning rate falls below this.
    early_stopping:     epochs without validation improvement before training stops (0 = never).
    grad_clip:          clip the gradient norm to this (0 = no clipping).
    energy_weight:      weight of the energy loss (RMSE + MAE of total energies, eV).
    forces_weight:      weight of the force loss (RMSE + MAE of components, eV/Å).
    atom_energy_weight: weight of the atomic-energy loss (RMSE + MAE, eV).
    uncertainty_weight: weight of the uncertainty loss: RMSE + MAE of log(u / σ) between the model's
                        per-atom uncertainty u and the teachers' force spread σ (models with an
                        uncertainty head). It trains the head only and is left out of the validation
                        loss that picks the best epoch, so energies and forces are learned as without it.
    hierarchicality:    weight of HIP-NN's hierarchicality regulariser.
    eval_batch_size:    conformations per batch when evaluating.
    core_repulsion:     give the model a repulsive floor below 0.85 × the training data's shortest
                        distance of each pair of elements (`ekd.training.floor`); zero on every training
                        conformation, so it changes nothing the model learns, only where it extrapolates.
    """

    max_epochs: int = 500
    max_time: float = 0.0
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 10
    min_lr: float = 1e-5
    early_stopping: int = 40
    grad_clip: float = 0.0
    energy_weight: float = 1.0
    forces_weight: float = 0.0
    atom_energy_weight: float = 0.0
    uncertainty_weight: float = 0.0
    hierarchicality: float = 0.01
    eval_batch_size: int = 512
    core_repulsion: bool = True

    def check(self, where: str) -> None:
        if self.max_epochs < 1:
            raise ConfigError(f"[{where}] max_epochs must be at least 1, got {self.max_epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"[{where}] batch sizes must be at least 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"[{where}] learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"[{where}] lr_factor must be in (0, 1), got {self.lr_factor}")
        weights = (self.energy_weight, self.forces_weight, self.atom_energy_weight, self.uncertainty_weight,
                   self.hierarchicality)
        if min(weights) < 0:
            raise ConfigError(f"[{where}] loss weights must not be negative")
        if self.energy_weight + self.forces_weight + self.atom_energy_weight == 0:
            raise ConfigError(f"[{where}] energy_weight, forces_weight and atom_energy_weight are all 0: "
                              "nothing to learn")
