"""Reading an exported file in Python: the one loader behind the ASE calculator, `ekd.evaluate`,
`ekd.bench` and `ekd.stability` (the C++ reader is `pair_style/`).

    model = load_exported("student.pt")            # checked metadata, species map
    out = model.evaluate(edge_vectors, receivers, senders, species, n_atoms, uncertainty=True)
    out.energy, out.atom_energy, out.forces, out.virial, out.atom_uncertainty

Forces and virial follow CONTRACT.md §2 from `edge_grad`; this is the only Python code that
turns edge gradients into forces.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ekd.errors import DataError, ModelFileError
from ekd.models.io import CHECKPOINT_NAME
from ekd.models.operators import LIBRARY, fused_available

from .metadata import MAX_METADATA_BYTES, METADATA_NAME, Metadata


@dataclass
class Evaluation:
    """One call's results in float64 on the CPU: eV, eV/Å, eV (virial = Σ_i x_i ⊗ F_i)."""

    energy: float
    atom_energy: torch.Tensor     # (N,)
    forces: torch.Tensor          # (N, 3)
    virial: torch.Tensor          # (3, 3)
    edge_grad: torch.Tensor       # (E, 3)
    atom_uncertainty: Optional[torch.Tensor] = None   # (N,) eV/Å: the file's own, or its members' deviation


@dataclass
class MemberEvaluation:
    """Every ensemble member's total energy (M,) and forces (M, N, 3), float64 on the CPU."""

    energies: torch.Tensor
    forces: torch.Tensor


@dataclass
class ExportedModel:
    """An exported file, loaded: its TorchScript module and its checked metadata."""

    path: Path
    module: torch.jit.ScriptModule
    metadata: Metadata
    device: torch.device

    @property
    def elements(self) -> List[str]:
        return list(self.metadata.elements)

    @property
    def has_uncertainty(self) -> bool:
        """A per-atom uncertainty: the file's own output, or the deviation of an ensemble's members."""
        return self.metadata.atom_uncertainty or (self.metadata.is_ensemble and self.metadata.members > 1)

    def species_index(self, symbols: Sequence[str]) -> torch.Tensor:
        """Model species index of each atom; an element the model does not know is refused,
        naming the first atom of it."""
        index = {s: k for k, s in enumerate(self.metadata.elements)}
        unknown = [k for k, s in enumerate(symbols) if s not in index]
        if unknown:
            first = unknown[0]
            raise ModelFileError(f"atom {first} is {symbols[first]}, an element the model {self.path} "
                                 f"does not know (it knows {' '.join(self.metadata.elements)})")
        return torch.tensor([index[s] for s in symbols], dtype=torch.long, device=self.device)

    def evaluate(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                 species: torch.Tensor, n_atoms: int, uncertainty: bool = False) -> Evaluation:
        """One call of `forward` with every atom a local node (CONTRACT.md §2); the virial
        uses `edge_vectors` as given (float64 positions keep it float64 for float32 models,
        as in the pair style). With `uncertainty`, also the per-atom uncertainty of a file that
        has one (`has_uncertainty`): its own output (§2c) or its members' force deviation."""
        refuse_same_positions(edge_vectors, receivers, senders)
        vectors = edge_vectors.to(device=self.device, dtype=self.metadata.torch_dtype)
        atom_uncertainty = None
        if uncertainty and self.metadata.atom_uncertainty:
            energy, atom_energy, edge_grad, own = self._call("forward_with_uncertainty", vectors, receivers, senders,
                                                             species, n_atoms)
            atom_uncertainty = own.detach().to("cpu", torch.float64)
        else:
            energy, atom_energy, edge_grad = self._call("forward", vectors, receivers, senders, species, n_atoms)
        if uncertainty and atom_uncertainty is None and self.has_uncertainty:
            members = self.evaluate_members(edge_vectors, receivers, senders, species, n_atoms)
            atom_uncertainty = force_deviation(members.forces)
        grad = edge_grad.detach().to("cpu", torch.float64)
        return Evaluation(float(energy), atom_energy.detach().to("cpu", torch.float64)[:n_atoms],
                          forces_from_edge_grad(grad, receivers.cpu(), senders.cpu(), n_atoms),
                          virial_from_edge_grad(edge_vectors.detach().to("cpu", torch.float64), grad), grad,
                          atom_uncertainty)

    def _call(self, method: str, vectors: torch.Tensor, *graph: Any) -> Tuple[torch.Tensor, ...]:
        """One method of the module on a graph; a module that fails or answers with values of other
        types or shapes than the contract's (damaged or foreign code) is refused, naming the file.
        Non-finite values are passed on: evaluation names the conformation, the ASE calculator
        refuses them (NonFiniteOutput)."""
        try:
            outputs = getattr(self.module, method)(vectors, *graph)
        except RuntimeError as err:  # TorchScript's own errors are RuntimeErrors
            raise ModelFileError(f"{self.path}: its {method}() failed: {str(err).strip().splitlines()[-1][:300]}") \
                from None
        n_edges = vectors.shape[0]
        expected = {"forward": [(), None, (n_edges, 3)], "forward_with_uncertainty": [(), None, (n_edges, 3), None],
                    "members": [(self.metadata.members,), (self.metadata.members, n_edges, 3)]}[method]
        if not isinstance(outputs, tuple) or len(outputs) != len(expected) or not all(
                isinstance(t, torch.Tensor) and (shape is None or tuple(t.shape) == shape)
                for t, shape in zip(outputs, expected)):
            raise ModelFileError(f"{self.path}: its {method}() answered with outputs of other types or shapes than "
                                 "the contract's (export/CONTRACT.md); a damaged or foreign file")
        return outputs

    def evaluate_members(self, edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                         species: torch.Tensor, n_atoms: int) -> MemberEvaluation:
        """Every member of an ensemble file (its `members` method); the energies are the sums
        over all `n_atoms`, so call it per structure."""
        if not self.metadata.is_ensemble:
            raise ModelFileError(f"{self.path} is a single {self.metadata.model_kind} model, not an ensemble")
        vectors = edge_vectors.to(device=self.device, dtype=self.metadata.torch_dtype)
        energies, grads = self._call("members", vectors, receivers, senders, species, n_atoms)
        grads = grads.detach().to("cpu", torch.float64)
        return MemberEvaluation(energies.detach().to("cpu", torch.float64),
                                forces_from_edge_grad(grads, receivers.cpu(), senders.cpu(), n_atoms))


def load_exported(path: Path | str, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an exported file with its metadata; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    _check_pickles(path)
    extra = {METADATA_NAME: ""}
    fused = fused_available()  # HIP-NN files exported with ekd's operators call them
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:  # torch raises RuntimeError or ValueError for damaged or foreign archives
        if not fused and "ekd::" in str(err):
            raise ModelFileError(f"{path}: this model calls ekd's fused operators (libekdops.so), which are not "
                                 "loaded: build them with python -m ekd.plugin build (or unset EKD_FUSED=0)") from None
        unknown = re.search(r"Unknown builtin op: (ekd::\w+)", str(err))
        if unknown:  # a file exported by a newer ekd than the library that is loaded
            raise ModelFileError(f"{path}: this model calls {unknown.group(1)}, which the loaded libekdops.so "
                                 f"({LIBRARY}) lacks: rebuild it with python -m ekd.plugin build") from None
        raise ModelFileError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
    return ExportedModel(path, module, Metadata.from_json(extra[METADATA_NAME], path), torch.device(device))


# What Python's zip reader raises on a damaged archive: a bad structure or checksum, an unknown
# zip version or compression (NotImplementedError), an "encrypted" flag (RuntimeError), ...
ZIP_DAMAGE = (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, NotImplementedError,
              RuntimeError)


def _check_pickles(path: Path) -> None:
    """Walk the archive's pickles opcode by opcode (pickletools reads, it never builds or runs
    anything) before torch does: torch's unpickler allocates whatever length a damaged opcode
    declares (2.6 GB for one fuzzed 140 kB file) before it finds the bytes missing."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".pkl") or name.endswith(".debug_pkl"):
                    for _ in pickletools.genops(archive.read(name)):
                        pass
    except ZIP_DAMAGE as err:
        raise ModelFileError(f"{path}: not a TorchScript file, or a damaged one ({type(err).__name__}: "
                             f"{str(err)[:120]})") from None


def read_metadata(path: Path | str) -> Metadata:
    """The checked metadata of an exported file, read from its archive without compiling the
    model (~100x faster than `load_exported`; a file whose TorchScript is damaged is refused
    when it is loaded)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_NAME}")]
            if names and archive.getinfo(names[0]).file_size > MAX_METADATA_BYTES:  # before reading: no zip bomb
                raise ModelFileError(f"{path}: {METADATA_NAME} has {archive.getinfo(names[0]).file_size} bytes, "
                                     f"more than ekd metadata ever holds ({MAX_METADATA_BYTES} at most)")
            text = archive.read(names[0]) if names else b""  # none: Metadata says it is not an ekd model
    except ZIP_DAMAGE as err:
        raise ModelFileError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
    return Metadata.from_json(text, path)


def is_exported(path: Path) -> bool:
    """True for a TorchScript file carrying ekd metadata (`<archive>/extra/ekd.json`); reads
    the archive's directory only."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{METADATA_NAME}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


# Two atoms closer than this (Å) are at the same position: the model's gradient is undefined there
# (the pair style refuses the same pairs).
SAME_POSITION = 1e-4


def refuse_same_positions(edge_vectors: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor) -> None:
    """An error naming the first two atoms (graph nodes) at the same position, and their distance."""
    lengths = torch.linalg.vector_norm(edge_vectors.detach().to(torch.float64), dim=-1)
    close = torch.nonzero(lengths < SAME_POSITION).flatten()
    if len(close):
        e = int(close[0])
        raise DataError(f"atoms {int(receivers[e])} and {int(senders[e])} are {float(lengths[e]):.2e} Å apart "
                        f"(closer than {SAME_POSITION:g} Å: two atoms at the same position)")


def force_deviation(member_forces: torch.Tensor) -> torch.Tensor:
    """Per-atom committee deviation sqrt(mean_k |F_k − mean F|²) of (M, N, 3) member forces."""
    deviation = member_forces - member_forces.mean(dim=0)
    return deviation.square().sum(dim=-1).mean(dim=0).sqrt()


def forces_from_edge_grad(grad: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                          n_atoms: int) -> torch.Tensor:
    """F_receiver += g, F_sender −= g (CONTRACT.md §2), in float64; works on (E, 3) and on
    (M, E, 3) gradients (members along dim 0)."""
    grad = grad.detach().to(torch.float64)
    dim = grad.dim() - 2
    shape = list(grad.shape)
    shape[dim] = n_atoms
    forces = torch.zeros(shape, dtype=torch.float64, device=grad.device)
    return forces.index_add(dim, receivers, grad).index_add(dim, senders, -grad)


def virial_from_edge_grad(edge_vectors: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """W = −Σ_e edge_vectors[e] ⊗ g_e (CONTRACT.md §2); the stress of a cell of volume V is −W/V."""
    return -torch.einsum("ea,eb->ab", edge_vectors.to(torch.float64), grad.to(torch.float64))


def model_names(paths: Sequence[Path]) -> List[str]:
    """Short unique names for model files: the file stem, or the folder of a checkpoint.pt
    (`student`, `teacher_0`); a name already taken gets its parent folders prefixed, then a
    number."""
    def name_at(p: Path, depth: int) -> str:
        p = Path(p)
        head = p.parent if p.name == CHECKPOINT_NAME else p
        parts = [head.name if head.is_dir() or p.name == CHECKPOINT_NAME else head.stem]
        parts += [q.name for q in head.parents][:depth]
        return "/".join(reversed([x for x in parts if x]))

    taken: List[str] = []
    for p in paths:
        candidates = [name_at(p, depth) for depth in range(3)]
        name = next((c for c in candidates if c not in taken), None)
        k = 2
        while name is None:
            name = f"{candidates[0]}#{k}" if f"{candidates[0]}#{k}" not in taken else None
            k += 1
        taken.append(name)
    return taken
