"""Reading trained models back from ekd checkpoints (written by `ekd.training`).

Lives with the models so that readers of trained models (export, evaluation, the
calculator) need not import the training code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import ModelFileError
from .potential import Potential
from .registry import model_from_spec

CHECKPOINT_FORMAT = "ekd-checkpoint"
CHECKPOINT_VERSION = 1
# A trained model's folder holds these two files (written by ekd.training.Trainer).
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint dictionary, after checking it is one of ours."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors and plain containers only, so a crafted file cannot run code here
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(unsupported GLOBAL \S+|Unsupported global: \S+ \S+)", str(err))
        if found is None:  # not ekd's kind of pickle at all: a damaged or foreign file
            detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
            raise ModelFileError(f"{path}: not a readable checkpoint "
                                 f"({detail.group(1).strip() if detail else str(err).splitlines()[0]})") from None
        raise ModelFileError(f"{path}: refused: it holds objects other than tensors, numbers, strings and plain "
                             f"containers ({found.group(1)}), and loading them could run code; ekd checkpoints "
                             "never hold such objects") from None
    except Exception as err:  # torch raises several types for corrupt files
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an ekd checkpoint")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: checkpoint version {state['version']} is newer than this ekd "
                             f"understands ({CHECKPOINT_VERSION}); upgrade ekd")
    return state


def model_from_checkpoint(state: Dict[str, Any]) -> Potential:
    """The best weights of a checkpoint dictionary, in the checkpoint's dtype, in eval mode."""
    model = model_from_spec(state["model_spec"]).to(getattr(torch, state.get("dtype", "float32")))
    model.load_state_dict(state["best_state"])  # after the dtype change, so no weight is rounded
    return model.eval()


def load_model(path: Path) -> Potential:
    """The best weights of a checkpoint file, in the checkpoint's dtype, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path))
