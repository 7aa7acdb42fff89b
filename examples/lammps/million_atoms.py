"""A million atoms of liquid water on one machine: the demo student in LAMMPS, a few MD steps,
throughput and the memory of every rank.

    python examples/lammps/million_atoms.py MODEL_OR_RUN_DIR [--atoms 1000000] [--ranks 2]
        [--threads 1] [--steps 5] [--blocks auto|yes|no] [--out DIR]

MODEL_OR_RUN_DIR is an exported file (`python -m ekd.export RUN -o student.pt --dtype float32`)
or a run directory, whose student is exported in float32. A base box of 1,000 water molecules
at 1.0 g/cm³ is written once and replicated k×k×k inside LAMMPS (`replicate`) to about --atoms;
NVE from 300 K, 0.25 fs steps, one untimed step first. The student was trained on isolated
molecules, so a liquid is outside what it knows: the run shows what memory and time a million
atoms take, not physics.

Prints LAMMPS's Performance line, each rank's peak resident memory, the memory per atom and
atoms per GB, and writes them to DIR/million_atoms.json (default: a folder next to this script).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from ase.build import molecule

from ekd.export import export_model, is_exported, read_metadata
from ekd.md.boxes import base_box
from ekd.md.lammps_driver import (neighbor_lines, pair_lines, read_performance, run_lammps, system_lines,
                                  thermo_lines, write_data)
from ekd.run_layout import checkpoints_for

BASE_MOLECULES = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="exported model file, or a run directory (its student)")
    parser.add_argument("--atoms", type=int, default=1_000_000, help="approximate number of atoms (default 1000000)")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed MD steps (default 5)")
    parser.add_argument("--blocks", choices=("auto", "yes", "no"), default="auto",
                        help="pair_style ekd's blocks keyword (default auto: graphs of more than the file's "
                             "whole_edges edges per rank run in blocks)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "million_atoms",
                        help="folder for the data file, deck, log and JSON")
    return parser.parse_args()


def model_file(source: Path, out: Path) -> Path:
    if source.is_file() and is_exported(source):
        return source.resolve()
    path = out / "student.pt"
    export_model(checkpoints_for(source, "student"), path, torch.float32)
    return path


def deck(model: Path, elements: list[str], copies: int, steps: int, blocks: str) -> str:
    return "\n".join([system_lines(), f"replicate {copies} {copies} {copies}",
                      pair_lines(model, elements, f"blocks {blocks}"), neighbor_lines(),
                      "velocity all create 300.0 4928459 mom yes rot yes", "fix nve all nve",
                      "timestep 0.00025", thermo_lines(every=max(steps, 1)), "run 1", f"run {steps}", ""])


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = model_file(args.source, args.out)
    elements = read_metadata(model).elements
    base = base_box([molecule("H2O")], copies=BASE_MOLECULES, density=1.0)
    copies = max(1, round((args.atoms / len(base)) ** (1.0 / 3.0)))
    n_atoms = len(base) * copies ** 3
    write_data(args.out / "data.lmp", base, elements)
    (args.out / "in.million").write_text(deck(model, elements, copies, args.steps, args.blocks))
    print(f"{n_atoms:,} atoms ({len(base)} replicated {copies}×{copies}×{copies}), {args.ranks} rank(s) × "
          f"{args.threads} thread(s), {model.name}, blocks {args.blocks}: running LAMMPS in {args.out} ...",
          flush=True)
    start = time.monotonic()
    rank_peaks: dict[int, float] = {}

    def watch(resident: dict[int, float]) -> None:
        for rank, mb in resident.items():
            rank_peaks[rank] = max(rank_peaks.get(rank, 0.0), mb)

    run = run_lammps(args.out / "in.million", ranks=args.ranks, threads=args.threads, monitor=watch)
    if not run.ok:
        print(f"LAMMPS failed: {run.error}", file=sys.stderr)
        return 1
    performance = read_performance(run.log)
    result = {
        "atoms": n_atoms, "ranks": args.ranks, "threads": args.threads, "steps": args.steps, "blocks": args.blocks,
        "model": str(model), "wall_seconds": time.monotonic() - start,
        "katom_step_per_s": performance.katom_step_per_s if performance else math.nan,
        "peak_mb_all_ranks": run.peak_rss_mb, "peak_mb_largest_rank": run.rank_peak_rss_mb,
        "sampled_peak_mb_by_rank": rank_peaks,
        "kb_per_atom": run.peak_rss_mb * 1024.0 / n_atoms,
        "atoms_per_gb": n_atoms / (run.peak_rss_mb / 1024.0),
    }
    (args.out / "million_atoms.json").write_text(json.dumps(result, indent=1))
    lines = [line for line in run.log.splitlines() if line.startswith("Performance:")]
    print(lines[-1] if lines else "no Performance line")  # the timed run's (the first is the untimed step's)
    print(f"{n_atoms:,} atoms: {result['katom_step_per_s']:.3g} katom-step/s; peak memory {run.peak_rss_mb:,.0f} MB "
          f"over {args.ranks} rank(s) (largest rank {run.rank_peak_rss_mb:,.0f} MB): "
          f"{result['kb_per_atom']:.2f} kB per atom, {result['atoms_per_gb']:,.0f} atoms per GB "
          f"(whole process, libraries included); {result['wall_seconds']:.0f} s in all; "
          f"wrote {args.out / 'million_atoms.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
