"""The exported model alone: TorchScript forward + edge gradients on a box, no LAMMPS; and the
same model driving MD in ASE (Velocity Verlet through `EKDCalculator`), the Python path users
take outside LAMMPS.

The graph is the one `pair_style ekd` builds on one MPI rank (every atom a local node,
periodic images through edge vectors), and the C library's heap is set up as the pair style
sets it (`heap keep`), so LAMMPS's pair time minus this time is the pair style's own overhead
(neighbour-list conversion, copies, write-back).

The benchmark times each model in a child process (`python -m ekd.bench.model_timing MODEL BOX
--threads N`) just before that model's LAMMPS run, so machine drift between the two timings is
small and the benchmark process itself never holds a large model's memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import ase.io
import numpy as np
import torch
from ase import Atoms

from ..export import graph_of, load_exported
from ..heap import keep_freed_memory
from .flops import matmul_flops, sgemm_gflops


def time_model(model: Path, atoms: Atoms, threads: int, repeats: int = 5, warmup: int = 2) -> Dict[str, float]:
    """One call of the exported model on `atoms`: median "seconds", the resident memory (MB) the
    calls added to the process's peak ("added_mb": the model's working memory, its tensors and
    what autograd keeps; on Linux, else NaN), its matrix-product FLOPs ("matmul_flops") and this
    process's float32 GEMM rate on the same threads ("sgemm_gflops", `flops.py`)."""
    keep_freed_memory()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        exported = load_exported(model)
        module, metadata = exported.module, exported.metadata
        species = exported.species_index(atoms.get_chemical_symbols()).numpy()
        g = graph_of(species, atoms.positions, metadata.cutoff, np.asarray(atoms.cell))
        args = (g.edge_vectors.to(metadata.torch_dtype), g.receivers, g.senders, g.species, g.n_local)
        del g
        before = _status_mb("VmRSS")
        with torch.jit.optimized_execution(False):
            for _ in range(warmup):
                module(*args)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                module(*args)
                times.append(time.perf_counter() - start)
        added = _status_mb("VmHWM") - before
        with torch.jit.optimized_execution(False):
            flops = matmul_flops(module, args)
    finally:
        torch.set_num_threads(previous)
    return {"seconds": float(np.median(times)), "added_mb": added, "matmul_flops": flops,
            "sgemm_gflops": sgemm_gflops(threads)}


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def time_ase_md(model: Path, atoms: Atoms, threads: int, steps: int = 20, warmup: int = 3) -> float:
    """Seconds per step of NVE Velocity Verlet (0.25 fs) in ASE with `EKDCalculator` (its
    neighbour list kept between steps), from the box's positions at 300 K."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from ..calculator import EKDCalculator  # which keeps freed memory, as the pair style

    torch.set_num_threads(threads)
    atoms = atoms.copy()
    atoms.calc = EKDCalculator(str(model))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dynamics.run(warmup)
    start = time.perf_counter()
    dynamics.run(steps)
    return (time.perf_counter() - start) / steps


def time_model_in_child(model: Path, atoms: Atoms, threads: int, folder: Path, ase_md: bool = False
                        ) -> Optional[dict]:
    """`time_model` (or with `ase_md`, `time_ase_md`) in a child process: {"seconds", and for the
    model alone "added_mb", "matmul_flops", "sgemm_gflops"}; None (and the reason printed) if it
    fails."""
    folder.mkdir(parents=True, exist_ok=True)
    box = folder / "box.extxyz"
    ase.io.write(box, atoms)
    command = [sys.executable, "-m", "ekd.bench.model_timing", str(model), str(box), "--threads", str(threads)]
    command += ["--ase-md"] if ase_md else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        print(f"model alone: {model} failed: {lines[-1] if lines else f'exit code {done.returncode}'}", flush=True)
        return None
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekd.bench.model_timing",
                                     description="Median seconds of one call of an exported model on a box, "
                                                 "the memory the calls add, its matrix-product FLOPs and this "
                                                 "machine's float32 GEMM rate (JSON on the last line).")
    parser.add_argument("model", type=Path, help="exported model (.pt)")
    parser.add_argument("box", type=Path, help="periodic box (any file ase.io reads)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--ase-md", action="store_true", help="seconds per step of ASE MD instead")
    args = parser.parse_args(argv)
    atoms = ase.io.read(args.box)
    if args.ase_md:
        print(json.dumps({"seconds": time_ase_md(args.model, atoms, threads=args.threads)}))
    else:
        print(json.dumps(time_model(args.model, atoms, threads=args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
