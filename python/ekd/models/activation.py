"""HIP-NN's activation functions: SiLU, softplus, tanh by name. SiLU's derivatives are ekd's
operator `silu` (`activation.cpp`) in training on the CPU."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from .operators import fused_available


class FusedSiLU(nn.Module):
    """SiLU x σ(x) whose first and second derivatives are one operator each (`activation.cpp`),
    where a force loss makes autograd differentiate its backward: in training, on the CPU.
    Elsewhere (evaluation, exported files, other devices) the stock `silu`, to the same numbers
    within rounding; exported files do not call the operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript does not compile this branch
            if self.training and x.device.type == "cpu":
                return torch.ops.ekd.silu(x)
        return nn.functional.silu(x)


def silu() -> nn.Module:
    """The SiLU module a new model uses: fused when ekd's operators are loaded."""
    return FusedSiLU() if fused_available() else nn.SiLU()


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"softplus": nn.Softplus, "silu": silu, "tanh": nn.Tanh}
