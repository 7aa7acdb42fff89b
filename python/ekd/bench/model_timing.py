"""The exported model alone: TorchScript forward + edge gradients on a box, no LAMMPS.

The graph is the one `pair_style ekd` builds on one MPI rank (every atom a local node,
periodic images through edge vectors), and the C library's heap is set up as the pair style
sets it (`heap keep`), so LAMMPS's pair time minus this time is the pair style's own overhead
(neighbour-list conversion, copies, write-back).
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from ..export import graph_of, read_metadata


def keep_tensor_memory() -> None:
    """As `pair_style ekd ... heap keep`: glibc serves large blocks from its heap and keeps
    freed memory, so each call reuses the previous call's pages (no-op without glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def time_model(model: Path, atoms: Atoms, threads: int, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds per call of the exported model on `atoms`."""
    metadata = read_metadata(model)
    keep_tensor_memory()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = torch.jit.load(str(model))
        index = {s: k for k, s in enumerate(metadata["elements"])}
        species = np.array([index[s] for s in atoms.get_chemical_symbols()])
        g = graph_of(species, atoms.positions, float(metadata["cutoff"]), np.asarray(atoms.cell))
        args = (g.edge_vectors.to(getattr(torch, metadata["dtype"])), g.receivers, g.senders, g.species, g.n_local)
        with torch.jit.optimized_execution(False):
            for _ in range(warmup):
                module(*args)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                module(*args)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return float(np.median(times))
