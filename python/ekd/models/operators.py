"""ekd's own operators: `torch.ops.ekd.*`, C++ in `neighbour_sum.cpp` (HIP-NN's neighbour
sums), `species_sum.cpp` (layer 0's sum by species), `sensitivity.cpp` (its distance
sensitivities), `edge_length.cpp`, and two that only training calls: `activation.cpp` (SiLU
with one-operator derivatives) and `../training/loss.cpp` (RMSE + MAE), all built into
`lib/libekdops.so` by `python -m ekd.plugin build`. A HIP-NN made while they are loaded uses them
on the CPU (forward, forces and the second derivatives of force-loss training), and its exported
files call the first four: the pair style links the library and `ekd.export.load_exported`
loads it. Without the library (or with EKD_FUSED=0) models use stock PyTorch operators, to the
same numbers within rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

LIBRARY = Path(__file__).resolve().parents[1] / "lib" / "libekdops.so"
_loaded: Optional[bool] = None


def fused_available() -> bool:
    """True when ekd's operators are registered (loading `lib/libekdops.so` if it is built),
    unless the environment sets EKD_FUSED=0."""
    global _loaded
    if os.environ.get("EKD_FUSED", "1") == "0":
        return False
    if _loaded is None:
        if not _registered() and LIBRARY.is_file():
            torch.ops.load_library(str(LIBRARY))
        _loaded = _registered()
    return _loaded


def _registered() -> bool:
    try:
        torch.ops.ekd.environment  # noqa: B018 - raises if no library registered it
        return True
    except (AttributeError, RuntimeError):
        return False


def uses_ekd_operators(model: torch.nn.Module) -> bool:
    """True if `model` calls ekd's operators (its exported files need them: format version 3)."""
    from .neighbour_sum import FusedSum  # here, not at the top: those modules import this one
    from .radial import FusedExponentials, FusedLengths

    return any(isinstance(m, (FusedSum, FusedExponentials, FusedLengths)) for m in model.modules())
