"""A repulsive floor where the training data end: ZBL screened nuclear repulsion, switched on
below an onset distance for each pair of elements, set under the training data's shortest.

A network trained on molecules near equilibrium knows nothing of closer contacts: in MD it
can let a hydrogen fall into its own oxygen (0.05 Å; docs/results.md, "Towards liquid water").
Every pair (i, j) closer than its onset r_on(Z_i, Z_j) adds

    E(r) = k_e Z_i Z_j / r · φ(r / a) · S(r),   a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),

the universal screened Coulomb repulsion of Ziegler, Biersack and Littmark (1985), with the
switch S = 1 below 0.7 r_on falling smoothly (zero slope and curvature at both ends) to 0 at
r_on. Training puts the onsets below the training data's shortest distances
(`ekd.training.floor`), so on every training conformation the term is exactly zero and the
network learns what it learns without it; the term only acts where the model would otherwise
extrapolate. Half of a pair's energy goes to each
atom (each pair is two directed edges), so per-atom energies and several MPI ranks need nothing
extra. The onsets travel with the model spec (`core_repulsion`), not in its weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from torch import nn

COULOMB = 14.399645           # e²/4πε₀ in eV·Å
SCREENING_LENGTH = 0.46850    # Å
SCREENING_EXPONENT = 0.23
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_DECAYS = (3.19980, 0.94229, 0.40290, 0.20162)
INNER = 0.7                   # the switch runs from INNER × onset (full repulsion) to the onset (none)


class CoreRepulsion(nn.Module):
    """Per-atom ZBL repulsion of the edges shorter than their element pair's onset (Å; 0: none)."""

    def __init__(self, elements: List[int], onsets: Optional[List[List[float]]] = None) -> None:
        super().__init__()
        n = len(elements)
        # not in the state dict: the onsets are part of the model spec, the weights stay as they were
        self.register_buffer("charges", torch.tensor([float(z) for z in elements], dtype=torch.float64),
                             persistent=False)
        # per pair of species (flattened): onset, ½ k_e Z_i Z_j, 1 / a; per ZBL term: decay, coefficient
        self.register_buffer("pair_table", torch.zeros(n * n, 3, dtype=torch.float64), persistent=False)
        self.register_buffer("zbl", torch.tensor([ZBL_DECAYS, ZBL_COEFFICIENTS], dtype=torch.float64),
                             persistent=False)
        self.n_species = n
        self.inner = INNER
        self.enabled = False
        self.skipped = False    # set by `skipping()`: the caller's conformations have no pair below its onset
        self.reach = 0.0
        if onsets is not None:
            self.set_onsets(onsets)

    def set_onsets(self, onsets: List[List[float]]) -> None:
        """Onsets (Å) per pair of species indices, symmetric; 0 switches a pair off."""
        table = torch.tensor(onsets, dtype=torch.float64)
        n = self.n_species
        if table.shape != (n, n):
            raise ValueError(f"core repulsion onsets must be a {n} x {n} table (one row per element), got "
                             f"{tuple(table.shape)}")
        if not bool(torch.isfinite(table).all()) or bool((table < 0).any()) or not bool((table == table.T).all()):
            raise ValueError("core repulsion onsets must be finite, non-negative and symmetric")
        z = self.charges.to(torch.float64)
        screening = SCREENING_LENGTH / (z[:, None] ** SCREENING_EXPONENT + z[None, :] ** SCREENING_EXPONENT)
        pairs = torch.stack([table, 0.5 * COULOMB * z[:, None] * z[None, :], 1.0 / screening], dim=-1)
        self.pair_table = pairs.reshape(n * n, 3).to(self.pair_table.device, self.pair_table.dtype)
        self.reach = float(table.max())
        self.enabled = self.reach > 0.0

    @contextmanager
    def skipping(self) -> Iterator[None]:
        """Leave the term out while the caller evaluates conformations it is exactly zero on (the
        training conformations, which have no pair below its onset): training steps then
        cost what they cost without it (measured: 11-14 % of the demo student's step)."""
        before, self.skipped = self.skipped, True
        try:
            yield
        finally:
            self.skipped = before

    def onsets(self) -> List[List[float]]:
        return self.pair_table[:, 0].reshape(self.n_species, self.n_species).tolist()

    def forward(self, r: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, species: torch.Tensor,
                n_nodes: int) -> torch.Tensor:
        """(n_nodes,) energies (eV, the dtype of r) of the receivers of the edges of lengths r
        (every receiver one of nodes [0, n_nodes))."""
        energy = r.new_zeros(n_nodes)
        if not self.enabled or self.skipped:
            return energy
        close = torch.nonzero(r < self.reach).squeeze(1)
        if close.numel() == 0:
            return energy
        # few operators on the few close edges: in MD this runs every step beside the network
        distance = r.index_select(0, close)
        receiver = receivers.index_select(0, close)
        pair = species.index_select(0, receiver) * self.n_species + species.index_select(0, senders.index_select(0, close))
        onset, prefactor, inverse_screening = self.pair_table.to(r.dtype).index_select(0, pair).unbind(1)
        zbl = self.zbl.to(r.dtype)
        phi = torch.exp(-(distance * inverse_screening).unsqueeze(1) * zbl[0]) @ zbl[1]
        x = ((distance - self.inner * onset) / ((1.0 - self.inner) * onset).clamp(min=1e-12)).clamp(0.0, 1.0)
        switch = 1.0 - x * x * x * (10.0 + x * (6.0 * x - 15.0))
        pair_energy = torch.where(distance < onset, prefactor / distance * phi * switch, torch.zeros_like(distance))
        return energy.index_add(0, receiver, pair_energy)
