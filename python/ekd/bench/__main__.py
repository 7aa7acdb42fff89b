"""`python -m ekd.bench RUN_DIR|MODEL.pt... [--sizes 1000,4000,16000] [--ranks 1,2] [--steps N]`

MD throughput and memory of the student, each teacher and the teacher ensemble in LAMMPS
(`pair_style ekd`), side by side in one run: periodic boxes of the run's molecules at
liquid-like density, the same positions for every model, models alternated at every size,
LAMMPS's own timings, peak resident memory of the run's processes, the model's own time
without LAMMPS (so the pair style's overhead is known), and each model's held-out errors.
Writes bench.md, bench.json and bench.png (default: RUN_DIR/bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import EkdError
from ..md.boxes import base_box, box_of_size, representative_molecules
from ..md.lammps_driver import SKIN
from . import report as report_module
from .model_timing import time_model_in_child
from .timed_md import Uncertainty, run_md


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ekd.bench", description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("source", nargs="+", type=Path,
                        help="a run directory, or exported model files (then --data is required)")
    parser.add_argument("--models", default="",
                        help="comma-separated models of the run (default: student, every teacher, ensemble)")
    parser.add_argument("--data", type=Path, default=None,
                        help="molecules for the boxes (any file ase.io reads; one molecule per frame) "
                             "when model files are given")
    parser.add_argument("--sizes", default="1000,4000,16000", help="approximate atom counts (default 1000,4000,16000)")
    parser.add_argument("--ranks", default="1,2", help="MPI rank counts (default 1,2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per rank (default: cores / ranks)")
    parser.add_argument("--steps", type=int, default=100, help="timed MD steps (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed MD steps first (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat every run, keep the fastest (default 1)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision of the exported models (default float32)")
    parser.add_argument("--density", type=float, default=0.9, help="mass density of the boxes, g/cm³ (default 0.9)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/bench)")
    parser.add_argument("--uncertainty", type=int, default=0, metavar="N",
                        help="also time every model that has a per-atom uncertainty (a student's head, an "
                             "ensemble's deviation) with it stored every N steps (fix pair), as MODEL+u "
                             "(default 0: no)")
    parser.add_argument("--committee", type=Path, default=None, metavar="FILE",
                        help="also time every single model with `committee FILE every N` (N from --uncertainty, "
                             "default 10), as MODEL+committee")
    parser.add_argument("--ase", action="store_true",
                        help="also time MD in ASE (Velocity Verlet through EKDCalculator, one process with the "
                             "one-rank run's threads) beside the one-rank LAMMPS run")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny check: one small size, 1 rank, 5 steps (used by the test suite)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.ranks, args.steps, args.warmup = "150", "1", 5, 2
    if args.uncertainty < 0:
        parser.error("--uncertainty must be >= 0")
    return args


def variants(files: Dict[str, Path], metadata: Dict[str, Any], args: argparse.Namespace
             ) -> Dict[str, tuple[Path, Optional[Uncertainty]]]:
    """Every model as it is, and with its uncertainty or a committee when asked for: name ->
    (file, what the run asks of the uncertainty)."""
    runs: Dict[str, tuple[Path, Optional[Uncertainty]]] = {name: (path, None) for name, path in files.items()}
    every = args.uncertainty or 10
    for name, path in files.items():
        meta = metadata[name]
        if args.uncertainty and (meta.atom_uncertainty or (meta.is_ensemble and meta.members > 1)):
            runs[f"{name}+u"] = (path, Uncertainty(every))
        if args.committee is not None and not meta.is_ensemble:
            runs[f"{name}+committee"] = (path, Uncertainty(every, args.committee.resolve()))
    return runs


def export_run_models(run: Path, names: List[str], out: Path, dtype: str) -> Dict[str, Path]:
    """Export the named models of a run (reusing files newer than their checkpoints)."""
    from ekd.export import export_model
    from ekd.run_layout import checkpoints_for

    files = {}
    for name in names:
        checkpoints = checkpoints_for(run, name)
        target = out / "models" / f"{name}_{dtype}.pt"
        if not target.exists() or target.stat().st_mtime < max(p.stat().st_mtime for p in checkpoints):
            export_model(checkpoints, target, getattr(torch, dtype))
        files[name] = target
    return files


def run_models_and_molecules(args: argparse.Namespace) -> tuple[Dict[str, Path], list, Dict[str, Any], Path]:
    """(model files by name, molecules, accuracy by name, output folder)."""
    from ase.io import read

    source = args.source[0]
    if len(args.source) == 1 and source.is_dir():
        from ekd.config import load_config
        from ekd.data import read_data
        from ekd.run_layout import ENSEMBLE, STUDENT, RunLayout

        layout = RunLayout(source)
        if not layout.config_path.exists():
            raise EkdError(f"{source}: not a run directory (no config.toml)")
        names = args.models.split(",") if args.models else [STUDENT, *layout.teacher_names(), ENSEMBLE]
        out = args.out or source / "bench"
        files = export_run_models(source, names, out, args.dtype)
        molecules = representative_molecules(read_data(load_config(layout.config_path).data))
        summary_path = layout.summary_json
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"models": {}}
        accuracy = {n: summary["models"].get(n, {}).get("test", {}) for n in names}
        return files, molecules, accuracy, out
    for path in args.source:
        if not path.is_file():
            raise EkdError(f"model file not found: {path}")
    if args.data is None:
        raise EkdError("with model files, give --data with the molecules to build boxes from")
    files = {p.stem: p for p in args.source}
    molecules = read(args.data, index=":")
    return files, molecules, {}, args.out or Path("bench")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.command_line = "python -m ekd.bench " + shlex.join(argv)
    try:
        return benchmark(args)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def benchmark(args: argparse.Namespace) -> int:
    from ekd.export import read_metadata

    files, molecules, accuracy, out = run_models_and_molecules(args)
    metadata = {name: read_metadata(path) for name, path in files.items()}
    elements = list(next(iter(metadata.values())).elements)
    for name, meta in metadata.items():
        if set(meta.elements) != set(elements):
            raise EkdError(f"{files[name]} knows elements {meta.elements}, other models {elements}: "
                           "benchmark models of the same elements")
    sizes = [int(s) for s in args.sizes.split(",")]
    rank_counts = [int(r) for r in args.ranks.split(",")]
    cores = os.cpu_count() or 1
    # The base box (about 120 atoms, fewer if a smaller size is asked for) is replicated to each size.
    atoms_per_set = sum(len(m) for m in molecules)
    base = base_box(molecules, copies=max(1, min(120, min(sizes)) // atoms_per_set), density=args.density)
    boxes = {size: box_of_size(base, size) for size in sizes}
    largest_cutoff = max(m.cutoff for m in metadata.values())
    for size, box in boxes.items():
        edge = float(min(box.cell.lengths()))
        if edge < largest_cutoff + SKIN:
            raise EkdError(f"size {size} gives a {edge:.1f} Å box, smaller than the cutoff {largest_cutoff} Å + "
                           f"skin {SKIN} Å; use more atoms")
    report: Dict[str, Any] = {
        "source": " ".join(str(s) for s in args.source), "command": args.command_line,
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}",
        "steps": args.steps, "warmup": args.warmup, "dtype": args.dtype, "accuracy": accuracy,
        "runs": [], "model_alone": {}, "ase_md": {},
    }
    runs = variants(files, metadata, args)
    names = list(runs)
    best: Dict[tuple, Dict[str, Any]] = {}
    turn = 0
    for repeat in range(args.repeats):
        for size, box in boxes.items():
            for ranks in rank_counts:
                order = names[turn % len(names):] + names[:turn % len(names)]  # rotate who goes first
                turn += 1
                for name in order:
                    threads = args.threads or max(1, cores // ranks)
                    folder = out / "runs" / f"{name}_{len(box)}_{ranks}"
                    model, uncertainty = runs[name]
                    if ranks == min(rank_counts) and uncertainty is None:
                        time_alone(report, name, model, box, args.threads or cores, folder)
                        if args.ase:
                            time_alone(report, name, model, box, args.threads or cores, folder, ase_md=True)
                    result = asdict(run_md(folder, model, box, elements, ranks, threads, args.steps, args.warmup,
                                           uncertainty=uncertainty))
                    result["model"] = name
                    key = (name, len(box), ranks)
                    if key not in best or (result["ok"] and result["katom_step_per_s"] > best[key].get(
                            "katom_step_per_s", -1.0)):
                        best[key] = result
                    _annotate(best[key], report["model_alone"].get(f"{name}@{len(box)}"),
                              report.get("model_alone_mb", {}).get(f"{name}@{len(box)}"))
                    report["runs"] = list(best.values())
                    report["ratios"] = report_module.ratios(report["runs"])
                    report["memory_per_atom"] = report_module.marginal_memory(report["runs"])
                    report["machine_fraction"] = report_module.machine_fraction(report)
                    report_module.write(report, out)  # partial results survive a failure later on
                    status = (f"{result['katom_step_per_s']:.3g} katom-step/s, {result['peak_rss_mb']:.0f} MB"
                              if result["ok"] else f"FAILED: {result['error']}")
                    print(f"{name}: {len(box)} atoms, {ranks} rank(s) × {threads} thread(s): {status}", flush=True)
    print(report_module.markdown(report))
    print(f"wrote {out / 'bench.md'}, bench.json, bench.png")
    return 0 if all(r["ok"] for r in report["runs"]) else 1


def time_alone(report: Dict[str, Any], name: str, model: Path, box: Any, threads: int, folder: Path,
               ase_md: bool = False) -> None:
    """The model alone (or, `ase_md`, MD in ASE), just before its LAMMPS run (drift between the
    two stays small), with the threads of a one-rank run so they compare like with like; the
    fastest of the repeats."""
    timing = time_model_in_child(model, box, threads, folder, ase_md)
    if timing is None:
        return
    seconds = float(timing["seconds"])
    key, table = f"{name}@{len(box)}", report["ase_md" if ase_md else "model_alone"]
    table[key] = min(seconds, table.get(key, seconds))
    memory = ""
    if "added_mb" in timing:
        report.setdefault("model_alone_mb", {})[key] = float(timing["added_mb"])
        memory = f", {float(timing['added_mb']):.0f} MB added"
    if "matmul_flops" in timing:
        report.setdefault("model_flops", {})[key] = {"matmul_flops": int(timing["matmul_flops"]),
                                                     "sgemm_gflops": float(timing["sgemm_gflops"]),
                                                     "threads": threads}
        rate = timing["matmul_flops"] / seconds / 1e9
        memory += (f", {rate:.1f} GFLOP/s in matrix products ({rate / timing['sgemm_gflops']:.0%} of this "
                   f"process's sgemm, {timing['sgemm_gflops']:.0f} GFLOP/s)")
    print(f"{'ASE MD' if ase_md else 'model alone'}: {name}, {len(box)} atoms: {seconds * 1e3:.1f} ms/step{memory}",
          flush=True)


def _annotate(row: Dict[str, Any], model_seconds: float | None, model_mb: float | None = None) -> None:
    """Model-alone time and memory, and pair-style overhead (one rank: the pair time covers the
    same work)."""
    if model_mb is not None:
        row["model_mb"] = model_mb
    if model_seconds is None:
        return
    row["model_ms"] = model_seconds * 1e3
    if row["ok"] and row["ranks"] == 1:
        row["overhead"] = row["pair_seconds_per_step"] / model_seconds - 1.0


if __name__ == "__main__":
    sys.exit(main())
