"""An E(3)-equivariant message-passing potential in the style of NequIP (Batzner et al.,
Nat. Commun. 13, 2453 (2022)), written for ekd on e3nn.

Node features h_i are direct sums of irreducible representations (irreps) of O(3): channels
of order l = 0..l_max and parity p = ±1, stored in e3nn's layout (per irrep block, channel-major).

    h⁰_i           = W_emb one-hot(species_i)                                  (n_features × 0e)
    Y(r̂_ij)        = spherical harmonics l = 0..l_max, parity (−1)^l, component-normalised
    B_n(r)         = √(2/r_c) sin(ω_n r)/r · u(r/r_c),   ω_n = nπ/r_c initially (trainable)
    u(d)           = 1 − 28 d⁶ + 48 d⁷ − 21 d⁸ for d < 1, 0 beyond          (p = 6 envelope)

  interaction block t (input irreps I_t, output irreps O_t):
    x_j            = Linear₁(hᵗ_j)                                          (I_t → I_t)
    m_ij           = ⊕_paths √(2l_out+1) · R_path,u(B(r_ij)) · C^{l_in l_Y l_out} x_j,u ⊗ Y(r̂_ij)
                     ('uvu' tensor product: channel u keeps its own weight R from the radial MLP)
    M_i            = (1 / avg_neighbors) Σ_{j ∈ N(i)} m_ij
    g_i            = Linear₂(M_i) + Linear_self(hᵗ_i)                      (→ scalars ⊕ gates ⊕ gated)
    hᵗ⁺¹_i         = Gate(g_i) [+ hᵗ_i on the irrep blocks that input and output share]
    Gate:           0e → SiLU, 0o → tanh, l > 0 blocks × sigmoid(their own 0e gate)

    E_i            = MLP(scalar (0e) channels of h^T_i) + ε_species(i)          (returned as (N, 1))

Parity. The spherical harmonics carry parity (−1)^l (the edge vector is a polar vector, 1o),
so a reflection acts on every feature through its irrep label and the 0e energy is invariant
under all of O(3). The hidden irreps hold both parities for each l, as NequIP does: products
such as 1o ⊗ 1o → 1e (a cross product) give pseudo-tensors that only a both-parity model can
carry to the next layer. Irreps a block cannot reach are left out: the first block sees only
0e ⊗ Y and yields natural parity (0e, 1o, 2e, …); pseudo-tensors (1e, 2o, then 0o) appear from
the second block on. The last block outputs scalars only: the energy reads nothing else, so
l > 0 outputs there would be dead weight. With the default two blocks both parities therefore
cost nothing; with three or more the middle blocks carry them.

Normalisation follows e3nn's 'component' convention, so features stay O(1) whatever l_max and
n_features: the spherical harmonics have |Y_l|² = 2l + 1, each tensor-product path is scaled by
√(2l_out + 1) (the Wigner 3j symbols C have unit norm), linear layers by 1/√fan-in, and every
activation is scaled to unit second moment on standard normal input. The neighbour sum is
divided by the constant `avg_neighbors`, not by the actual degree, so energies stay smooth when
edges enter or leave the cutoff. As in NequIP the Bessel basis is not rescaled, so at
initialisation the messages are small (rms ~0.05–0.1) beside the self-interaction (~0.5).

Why the tensor product is written here rather than taken from `o3.TensorProduct`: e3nn stores
its Wigner 3j symbols as buffers in the default dtype when the module is built; a model built
in float32 and converted with `.to(torch.float64)` keeps float32-rounded symbols, and for l ≥ 2
its equivariance error is ~1e-8 in float64. `EdgeTensorProduct` recomputes the symbols from
e3nn's exact float64 values after every dtype change and is plain TorchScript. e3nn's
`SphericalHarmonics` and `o3.Linear` are used as they are (both script); the gate is written
here because e3nn's `nn.Gate` builds on a trace-only module that `torch.jit.script` refuses.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from e3nn import o3
from torch import nn

from .graph import rows_per_layer, scatter_sum
from .potential import Potential

# e3nn's spherical harmonics stop at l = 12.
MAX_L = 12


@dataclass
class EquivariantConfig:
    """Hyperparameters of the NequIP-style equivariant model.

    n_features:     channels per irrep (l, parity) in the hidden features.
    l_max:          highest order of the spherical harmonics and hidden irreps.
    n_interactions: message-passing (interaction) blocks; receptive field = this × cutoff.
    cutoff:         Å; edges at or beyond it contribute exactly zero.
    n_basis:        Bessel radial basis functions.
    radial_hidden:  width of the two hidden layers of the radial MLP of each block.
    avg_neighbors:  constant the neighbour sum is divided by (about the mean degree).
    """

    n_features: int = 32
    l_max: int = 1
    n_interactions: int = 2
    cutoff: float = 5.0
    n_basis: int = 8
    radial_hidden: int = 32
    avg_neighbors: float = 10.0

    def check(self) -> None:
        for name in ("n_features", "n_interactions", "n_basis", "radial_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.l_max <= MAX_L:
            raise ValueError(f"l_max must be between 0 and {MAX_L}, got {self.l_max}")
        if not self.cutoff > 0.0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if not self.avg_neighbors > 0.0:
            raise ValueError(f"avg_neighbors must be positive, got {self.avg_neighbors}")


# ---- scalar helpers ---------------------------------------------------------------------------

def second_moment_scale(function: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """1 / √E[f(z)²] for z ~ N(0, 1) (Gauss–Hermite quadrature): f scaled by this keeps
    unit-variance inputs at unit second moment, as e3nn's `normalize2mom` does."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    values = function(torch.as_tensor(nodes, dtype=torch.float64)).numpy()
    return float(1.0 / math.sqrt(np.sum(weights * values ** 2) / math.sqrt(2.0 * math.pi)))


SILU_SCALE = second_moment_scale(nn.functional.silu)
TANH_SCALE = second_moment_scale(torch.tanh)
SIGMOID_SCALE = second_moment_scale(torch.sigmoid)


def polynomial_envelope(d: torch.Tensor) -> torch.Tensor:
    """u(d) = 1 − (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) − p(p+1)/2 d^(p+2), p = 6, for d < 1 and
    exactly 0 beyond (DimeNet, Klicpera et al. 2020): u, u' and u'' vanish at d = 1."""
    # Clamped so that far edges cannot overflow d⁸ (an inf there would turn the masked
    # branch's zero gradient into NaN); the mask then makes the value exactly 0.
    dc = torch.clamp(d, max=1.0)
    d6 = dc ** 6
    inside = 1.0 - 28.0 * d6 + 48.0 * d6 * dc - 21.0 * d6 * dc * dc
    return torch.where(d < 1.0, inside, torch.zeros_like(d))


class BesselBasis(nn.Module):
    """B_n(r) = √(2/r_c) sin(ω_n r) / r · u(r / r_c), ω_n initialised at nπ/r_c and trainable."""

    def __init__(self, n_basis: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.prefactor = math.sqrt(2.0 / cutoff)
        frequencies = torch.arange(1, n_basis + 1, dtype=torch.float64) * math.pi / cutoff
        self.frequencies = nn.Parameter(frequencies.to(torch.get_default_dtype()))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) distances → (E, n_basis); rows of edges at or beyond the cutoff are exactly 0."""
        r = r.unsqueeze(-1)
        bessel = self.prefactor * torch.sin(self.frequencies * r) / r
        return bessel * polynomial_envelope(r / self.cutoff)


class RadialMLP(nn.Module):
    """Basis → per-edge tensor-product weights: two SiLU hidden layers, no biases.

    Without biases an all-zero basis row (an edge at or beyond the cutoff) gives exactly zero
    weights, hence exactly zero messages.
    """

    def __init__(self, n_basis: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.silu_scale = SILU_SCALE  # TorchScript reads module attributes, not module globals
        self.layers = nn.ModuleList([nn.Linear(n_in, n_o, bias=False) for n_in, n_o in
                                     ((n_basis, hidden), (hidden, hidden), (hidden, n_out))])
        for layer in self.layers:  # unit-variance outputs for unit-variance inputs
            nn.init.normal_(layer.weight, 0.0, 1.0 / math.sqrt(layer.in_features))

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        x = basis
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = self.silu_scale * nn.functional.silu(x)
        return x


# ---- irreps bookkeeping -----------------------------------------------------------------------

def hidden_irreps(l_max: int) -> List[o3.Irrep]:
    """Both parities for every l: 0e, 0o, 1o, 1e, 2e, 2o, … (the natural parity (−1)^l first)."""
    irreps: List[o3.Irrep] = []
    for l in range(l_max + 1):
        natural = (-1) ** l
        irreps += [o3.Irrep(l, natural), o3.Irrep(l, -natural)]
    return irreps


def reachable(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, candidates: List[o3.Irrep]) -> List[o3.Irrep]:
    """The candidate irreps some product (input irrep) ⊗ (spherical harmonic) contains."""
    produced = {ir for _, ir_in in irreps_in for _, ir_sh in irreps_sh for ir in ir_in * ir_sh}
    return [ir for ir in candidates if ir in produced]


def irreps_offsets(irreps: o3.Irreps) -> List[int]:
    """Start of every block of `irreps` in the flat feature vector."""
    starts, position = [], 0
    for mul, ir in irreps:
        starts.append(position)
        position += mul * ir.dim
    return starts


# ---- the equivariant building blocks ---------------------------------------------------------

class EdgeTensorProduct(nn.Module):
    """'uvu' tensor product x_j ⊗ Y(r̂_ij) with per-edge, per-channel weights, one output block per path.

    A path (input block of mul channels of l₁, harmonic l₂, output l₃) gives
        out[e, u, k] = √(2l₃+1) · w[e, u] · Σ_ab C[a, b, k] x[e, u, a] Y[e, b]
    with C e3nn's unit-norm Wigner 3j symbol: the same numbers as e3nn's
    `TensorProduct(..., [(i₁, i₂, i_out, "uvu", True)], irrep_normalization="component",
    path_normalization="element")` when every path has its own output block (tested).
    """

    # (input block, harmonic block, mul, d_in, d_sh, d_out, coupling offset)
    paths: List[Tuple[int, int, int, int, int, int, int]]
    in_sizes: List[int]
    sh_sizes: List[int]
    weight_sizes: List[int]

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets: List[o3.Irrep]) -> None:
        super().__init__()
        paths: List[Tuple[int, int, int, int, int, int, int]] = []
        self.ls: List[Tuple[int, int, int]] = []
        out_blocks: List[Tuple[int, o3.Irrep]] = []
        coupling_start = 0
        for i_in, (mul, ir_in) in enumerate(irreps_in):
            for i_sh, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out not in targets:
                        continue
                    paths.append((i_in, i_sh, mul, ir_in.dim, ir_sh.dim, ir_out.dim, coupling_start))
                    self.ls.append((ir_in.l, ir_sh.l, ir_out.l))
                    out_blocks.append((mul, ir_out))
                    coupling_start += ir_in.dim * ir_sh.dim * ir_out.dim
        self.paths = paths
        self.in_sizes = [mul * ir.dim for mul, ir in irreps_in]
        self.sh_sizes = [mul * ir.dim for mul, ir in irreps_sh]
        self.weight_sizes = [path[2] for path in paths]
        self.irreps_out = o3.Irreps(out_blocks)
        self.weight_numel = sum(self.weight_sizes)
        # Constants, not state: in the default dtype like the parameters, and recomputed after
        # every dtype/device change (see _apply).
        self.register_buffer("coupling", self._exact_coupling().to(torch.get_default_dtype()), persistent=False)

    def _exact_coupling(self) -> torch.Tensor:
        """All paths' √(2l₃+1) C^{l₁l₂l₃}, laid out (b, a, k) per path and flattened, in float64."""
        blocks = [math.sqrt(2 * l3 + 1) * o3.wigner_3j(l1, l2, l3, dtype=torch.float64).permute(1, 0, 2).reshape(-1)
                  for l1, l2, l3 in self.ls]
        return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # `.to(float32)` then `.to(float64)` would otherwise keep float32-rounded symbols,
        # which breaks equivariance at ~1e-8 in float64 for l ≥ 2.
        module = super()._apply(fn, recurse)
        old = self.coupling
        self.coupling = self._exact_coupling().to(device=old.device, dtype=old.dtype)
        return module

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x (E, irreps_in.dim), sh (E, irreps_sh.dim), weight (E, weight_numel) → (E, irreps_out.dim)."""
        n_edges = x.shape[0]
        # split, not slicing: the backward of a split is one cat, that of every slice a zero-filled copy.
        x_blocks = x.split(self.in_sizes, dim=1)
        sh_blocks = sh.split(self.sh_sizes, dim=1)
        weights = weight.split(self.weight_sizes, dim=1)
        outputs: List[torch.Tensor] = []
        for k, (i_in, i_sh, mul, d_in, d_sh, d_out, c_start) in enumerate(self.paths):
            xb = x_blocks[i_in].view(n_edges, mul, d_in)
            w = weights[k].unsqueeze(-1)                                                  # (E, mul, 1)
            coupling = self.coupling[c_start:c_start + d_sh * d_in * d_out].view(d_sh, d_in * d_out)
            # The products below are elementwise over ≤ 2l+1 components: on such tiny matrices
            # broadcast multiply-adds beat bmm, and the weight goes on the smaller side.
            if d_sh == 1:    # l₂ = 0: C is a multiple of the identity
                out = xb * (w * (sh_blocks[i_sh] * coupling[0, 0]).unsqueeze(-1))
            else:
                # Contract the harmonic first: (E, d_sh) @ (d_sh, d_in·d_out).
                operator = (sh_blocks[i_sh] @ coupling).view(n_edges, d_in, d_out)
                if d_in == 1:
                    out = (xb * w) * operator
                elif d_out == 1:
                    out = (xb * operator.view(n_edges, 1, d_in)).sum(dim=2, keepdim=True) * w
                else:
                    out = xb[:, :, 0:1] * operator[:, 0:1, :]
                    for a in range(1, d_in):
                        out = out + xb[:, :, a:a + 1] * operator[:, a:a + 1, :]
                    out = out * w
            outputs.append(out.reshape(n_edges, mul * d_out))
        return torch.cat(outputs, dim=1)


class Gate(nn.Module):
    """e3nn's gated nonlinearity in TorchScript.

    Input layout [scalars | gates | gated]: even scalars → SiLU, odd scalars → tanh (odd, so a
    0o stays 0o), every gated irrep (l > 0) × sigmoid(its own 0e gate). Output [scalars | gated].
    Each activation is scaled to unit second moment.
    """

    scalar_blocks: List[Tuple[int, int, bool]]
    gated_blocks: List[Tuple[int, int, int, int]]

    def __init__(self, scalars: o3.Irreps, gated: o3.Irreps) -> None:
        super().__init__()
        self.irreps_in = scalars + o3.Irreps([(mul, "0e") for mul, _ in gated]) + gated
        self.irreps_out = scalars + gated
        self.silu_scale, self.tanh_scale, self.sigmoid_scale = SILU_SCALE, TANH_SCALE, SIGMOID_SCALE
        starts = irreps_offsets(scalars)
        self.scalar_blocks = [(start, mul, ir.p == 1) for (mul, ir), start in zip(scalars, starts)]
        gate_start = scalars.dim
        gated_start = gate_start + gated.num_irreps
        blocks: List[Tuple[int, int, int, int]] = []
        for mul, ir in gated:
            blocks.append((gate_start, gated_start, mul, ir.dim))
            gate_start += mul
            gated_start += mul * ir.dim
        self.gated_blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        outputs: List[torch.Tensor] = []
        for start, mul, even in self.scalar_blocks:
            s = x[:, start:start + mul]
            outputs.append(self.silu_scale * nn.functional.silu(s) if even else self.tanh_scale * torch.tanh(s))
        for gate_start, gated_start, mul, dim in self.gated_blocks:
            gate = self.sigmoid_scale * torch.sigmoid(x[:, gate_start:gate_start + mul])
            gated = x[:, gated_start:gated_start + mul * dim].view(n, mul, dim)
            outputs.append((gated * gate.unsqueeze(-1)).reshape(n, mul * dim))
        return torch.cat(outputs, dim=1)


class InteractionBlock(nn.Module):
    """Convolution (Linear₁, 'uvu' tensor product with radial weights, neighbour sum, Linear₂),
    self-interaction, gate, and a residual on the irrep blocks input and output share."""

    residual: List[Tuple[int, int, int]]

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets: List[o3.Irrep],
                 config: EquivariantConfig) -> None:
        super().__init__()
        targets = reachable(irreps_in, irreps_sh, targets)
        scalars = o3.Irreps([(config.n_features, ir) for ir in targets if ir.l == 0])
        gated = o3.Irreps([(config.n_features, ir) for ir in targets if ir.l > 0])
        self.gate = Gate(scalars, gated)
        gate_targets = [ir for _, ir in self.gate.irreps_in]
        self.irreps_in, self.irreps_out = irreps_in, self.gate.irreps_out
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        self.tensor_product = EdgeTensorProduct(irreps_in, irreps_sh, gate_targets)
        self.radial = RadialMLP(config.n_basis, config.radial_hidden, self.tensor_product.weight_numel)
        self.linear_out = o3.Linear(self.tensor_product.irreps_out, self.gate.irreps_in)
        self.self_interaction = o3.Linear(irreps_in, self.gate.irreps_in)
        self.inverse_avg_neighbors = 1.0 / float(config.avg_neighbors)
        # (output start, input start, length) of the blocks the residual adds, in output order.
        in_starts, out_starts = irreps_offsets(irreps_in), irreps_offsets(self.irreps_out)
        residual: List[Tuple[int, int, int]] = []
        for (mul, ir), out_start in zip(self.irreps_out, out_starts):
            for (mul_in, ir_in), in_start in zip(irreps_in, in_starts):
                if (mul_in, ir_in) == (mul, ir):
                    residual.append((out_start, in_start, mul * ir.dim))
                    break
        self.residual = residual

    def forward(self, h: torch.Tensor, sh: torch.Tensor, basis: torch.Tensor, receivers: torch.Tensor,
                senders: torch.Tensor, n_out: int) -> torch.Tensor:
        """New features of nodes [0, n_out) (edges into other nodes must have been left out)."""
        x = self.linear_in(h)
        messages = self.tensor_product(x[senders], sh, self.radial(basis))
        pooled = scatter_sum(messages, receivers, n_out) * self.inverse_avg_neighbors
        h = h[:n_out]
        out = self.gate(self.linear_out(pooled) + self.self_interaction(h))
        if len(self.residual) == 0:
            return out
        pieces: List[torch.Tensor] = []
        position = 0
        for out_start, in_start, length in self.residual:
            if out_start > position:
                pieces.append(out[:, position:out_start])
            pieces.append(out[:, out_start:out_start + length] + h[:, in_start:in_start + length])
            position = out_start + length
        if position < out.shape[1]:
            pieces.append(out[:, position:])
        return torch.cat(pieces, dim=1)


class EquivariantPotential(Potential):
    """NequIP-style E(3)-equivariant model; `forward` returns per-atom energies (N, 1)."""

    def __init__(self, elements: List[int], config: EquivariantConfig) -> None:
        config.check()
        super().__init__("equivariant", elements, config.cutoff, config.n_interactions)
        self.config = config
        width = config.n_features
        self.embedding = nn.Linear(len(elements), width, bias=False)
        nn.init.normal_(self.embedding.weight)  # one-hot input: unit-variance features
        irreps_sh = o3.Irreps.spherical_harmonics(config.l_max)  # 0e + 1o + 2e + …
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
        self.basis = BesselBasis(config.n_basis, config.cutoff)
        irreps = o3.Irreps(f"{width}x0e")
        blocks = []
        for t in range(config.n_interactions):
            last = t == config.n_interactions - 1
            targets = [o3.Irrep("0e")] if last else hidden_irreps(config.l_max)
            block = InteractionBlock(irreps, irreps_sh, targets, config)
            blocks.append(block)
            irreps = block.irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.irreps_hidden = [str(block.irreps_out) for block in blocks]
        self.sh_dim = irreps_sh.dim
        hidden = max(width // 2, 1)
        self.readout = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # small initial energies: the network learns a residual
            self.readout[2].weight.mul_(0.1)
            self.readout[2].bias.zero_()
        self.species_energy = nn.Linear(len(elements), 1, bias=False)
        nn.init.zeros_(self.species_energy.weight)

    def hyperparameters(self) -> Dict[str, Any]:
        return asdict(self.config)

    def forward(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                species: torch.Tensor, n_energy: int = -1) -> torch.Tensor:
        n_nodes = species.shape[0]
        one_hot = nn.functional.one_hot(species, self.n_species).to(edge_vectors.dtype)
        h = self.embedding(one_hot)
        r = torch.linalg.vector_norm(edge_vectors, dim=-1)
        sh, basis = self.spherical_harmonics(edge_vectors), self.basis(r)
        rows = rows_per_layer(receivers, senders, n_nodes, len(self.blocks), n_energy)
        for t, block in enumerate(self.blocks):
            if rows[t] < n_nodes:  # only nodes [0, rows[t]) are read later: edges into them alone
                keep = receivers < rows[t]
                h = block(h, sh[keep], basis[keep], receivers[keep], senders[keep], rows[t])
            else:
                h = block(h, sh, basis, receivers, senders, n_nodes)
        # The last block outputs exactly the n_features even scalars the readout takes.
        energy = self.readout(h)
        if energy.shape[0] < n_nodes:
            energy = torch.cat([energy, energy.new_zeros(n_nodes - energy.shape[0], 1)])
        repulsion = self.core_repulsion(r, receivers, senders, species, n_nodes).unsqueeze(1)
        return energy + self.species_energy(one_hot) + repulsion

    def edge_features(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """(E, sh + n_basis): the edges' spherical harmonics and radial basis, side by side (and
        the edge lengths as a last column for the core repulsion, when it is on)."""
        return self.with_distances(*self.network_edge_features(edge_vectors))

    def network_edge_features(self, edge_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (E, sh + n_basis) features and (E,) lengths of the edges, apart."""
        r = torch.linalg.vector_norm(edge_vectors, dim=-1)
        return torch.cat([self.spherical_harmonics(edge_vectors), self.basis(r)], dim=1), r

    def exchange_features(self) -> List[int]:
        """Widths of the hidden features after each block but the last (what ranks exchange)."""
        return [block.irreps_out.dim for block in self.blocks][:-1]

    def layer(self, t: int, z: torch.Tensor, features: torch.Tensor, receivers: torch.Tensor,
              senders: torch.Tensor, species: torch.Tensor, n_rows: int,
              distances: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Block t alone for nodes [0, n_rows) (every edge's receiver is one of them), from the
        features z of every node (t = 0: ignored, the species embedding is used): the block's
        output and the energy terms (species terms in block 0, the readout in the last)."""
        one_hot = nn.functional.one_hot(species[:n_rows], self.n_species).to(features.dtype)
        if t == 0:
            z = self.embedding(nn.functional.one_hot(species, self.n_species).to(features.dtype))
        features, r = self.split_distances(features, distances)
        sh, basis = features[:, :self.sh_dim], features[:, self.sh_dim:]
        out = z[:n_rows]
        for k, block in enumerate(self.blocks):  # TorchScript indexes a ModuleList by constants only
            if k == t:
                out = block(z, sh, basis, receivers, senders, n_rows)
        energy = out.new_zeros(n_rows)
        if t == len(self.blocks) - 1:
            energy = energy + self.readout(out).squeeze(-1)
        if t == 0:
            energy = (energy + self.species_energy(one_hot).squeeze(-1)
                      + self.core_repulsion(r, receivers, senders, species, n_rows))
        return out, energy
