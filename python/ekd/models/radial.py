"""Distance features: edge lengths, the smooth cutoff and HIP-NN's inverse-distance Gaussian
sensitivities."""

from __future__ import annotations

import math

import torch
from torch import nn

from .operators import fused_available


def log_cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """log φ_cut(r), φ_cut = cos²(π r / 2 r_c), inside the cutoff (finite: r < r_c; value and slope
    of φ vanish at r_c), -1e4 outside (far below any exponent's floor)."""
    inside = r < cutoff
    phi = torch.cos(0.5 * math.pi * torch.where(inside, r, torch.zeros_like(r)) / cutoff) ** 2
    return torch.where(inside, torch.log(phi), torch.full_like(phi, -1e4))


class InverseGaussianSensitivity(nn.Module):
    """s_ν(r) = exp(-(1/r - 1/μ_ν)² / 2σ_ν²) · φ_cut(r)  (Lubbers, Smith, Barros 2018).

    Centres are evenly spaced in 1/r between 1/soft_max and 1/soft_min, so resolution is
    finest at short range; below soft_min the Gaussians decay, which keeps energies smooth
    for close contacts. Centres and widths are trainable.
    """

    def __init__(self, n_sensitivities: int, soft_min: float, soft_max: float, cutoff: float) -> None:
        super().__init__()
        if not 0.0 < soft_min < soft_max <= cutoff:
            raise ValueError(f"need 0 < soft_min < soft_max <= cutoff, got {soft_min}, {soft_max}, {cutoff}")
        inverse_centres = torch.linspace(1.0 / soft_max, 1.0 / soft_min, n_sensitivities, dtype=torch.float64)
        spacing = (1.0 / soft_min - 1.0 / soft_max) / max(n_sensitivities - 1, 1)
        dtype = torch.get_default_dtype()
        self.inverse_centres = nn.Parameter(inverse_centres.to(dtype))
        self.inverse_widths = nn.Parameter(torch.full((n_sensitivities,), spacing, dtype=dtype))
        self.cutoff = cutoff
        self.exponentials = FusedExponentials() if fused_available() else StockExponentials()

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) distances → (E, n_sensitivities)."""
        # s_ν = exp(x_ν) with the exponent x_ν = -(1/r - μ_ν)²/2σ_ν² + log φ_cut(r), a quadratic in
        # u = 1/r - m plus log φ: every sensitivity at once is one (E, 4) @ (4, ν) product, and the
        # cutoff costs no pass over the (E, ν) table. m, the mean centre, is a constant that keeps
        # the terms small in float32 (≤ 5e-6 relative rounding). Three passes over the table
        # forward and about four backward: its memory traffic, not arithmetic, sets the time.
        # x is clamped at -60 (exp(-60) = 8.8e-27, a normal float32): far from its centre or at
        # the cutoff a sensitivity is negligible anyway, and exp of lower arguments (results
        # subnormal or 0 in float32) takes 10-30× as long on CPU (one 1M-element float32 exp, one
        # thread: 2 ms at -50, 77 ms at -95, 24 ms at -200).
        m = self.inverse_centres.detach().mean()
        shifted = self.inverse_centres - m
        curvature = 1.0 / self.inverse_widths ** 2
        coefficients = torch.stack([-0.5 * curvature, shifted * curvature, -0.5 * shifted ** 2 * curvature,
                                    torch.ones_like(curvature)])
        return self.exponentials(r, coefficients, m, self.cutoff)


class StockExponentials(nn.Module):
    """exp(max(x, -60)) of the exponents x = [u², u, 1, log φ_cut(r)] @ coefficients, u = 1/r - m,
    in PyTorch operators (any device; differentiable to any order)."""

    def forward(self, r: torch.Tensor, coefficients: torch.Tensor, m: torch.Tensor, cutoff: float) -> torch.Tensor:
        u = 1.0 / r - m
        powers = torch.stack([u * u, u, torch.ones_like(u), log_cosine_cutoff(r, cutoff)], dim=1)
        return torch.exp((powers @ coefficients).clamp(min=-60.0))


class FusedExponentials(nn.Module):
    """The same with ekd's operator `sensitivities` (`sensitivity.cpp`: one pass over the edges
    forward and one backward) on the CPU; elsewhere `StockExponentials`."""

    def __init__(self) -> None:
        super().__init__()
        self.stock = StockExponentials()

    def forward(self, r: torch.Tensor, coefficients: torch.Tensor, m: torch.Tensor, cutoff: float) -> torch.Tensor:
        if r.device.type != "cpu":
            return self.stock(r, coefficients, m, cutoff)
        return torch.ops.ekd.sensitivities(r, coefficients, float(m), cutoff)


class StockLengths(nn.Module):
    """|v| of (E, 3) edge vectors with `torch.linalg.vector_norm` (any device)."""

    def forward(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(edge_vectors, dim=-1)


class FusedLengths(nn.Module):
    """The same with ekd's operator `edge_lengths` (`edge_length.cpp`: one pass over the edges
    forward and one backward) on the CPU; elsewhere `StockLengths`."""

    def __init__(self) -> None:
        super().__init__()
        self.stock = StockLengths()

    def forward(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        if edge_vectors.device.type != "cpu":
            return self.stock(edge_vectors)
        return torch.ops.ekd.edge_lengths(edge_vectors)


def edge_lengths() -> nn.Module:
    """The edge-length module a new model uses: fused when ekd's operators are loaded."""
    return FusedLengths() if fused_available() else StockLengths()
