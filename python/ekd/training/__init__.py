"""Training: losses, the loop with checkpoints and resume, inference over data sets, metrics."""

from ..fileio import atomic_torch_save, file_sha256
from ..models.io import read_checkpoint
from .config import TrainConfig
from .inference import Predictions, predict_all
from .loop import CHECKPOINT_NAME, METRICS_NAME, Trainer, TrainResult
from .metrics import errors

__all__ = ["atomic_torch_save", "file_sha256", "read_checkpoint", "TrainConfig", "Predictions", "predict_all",
           "CHECKPOINT_NAME", "METRICS_NAME", "Trainer", "TrainResult", "errors"]
