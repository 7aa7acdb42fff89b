"""The same exported models through two builds of `pair_style ekd`, alternating A, B, A, B, ...
on the same boxes in one run: a before/after comparison of the C++ side that machine drift
cannot fake (each build's fastest repeat is kept; the ratio is B over A).

A build is a checkout whose plugin was built in place (`PYTHONPATH=CHECKOUT/python python -m
ekd.plugin build` in that checkout): `lmp` finds the plugin through the `ekd.plugin` that
PYTHONPATH selects, so only the LAMMPS child processes see the other build.

    python examples/bench/plugin_ab.py --a /tmp/before --b /tmp/after student.pt teacher.pt \\
        --data molecules.xyz --sizes 1000,4000 --steps 20 --repeats 2

The molecules file is any file ase reads (one molecule per frame), as for `ekd.bench --data`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, List

from ase.io import read

from ekd.bench.timed_md import run_md
from ekd.export import read_metadata
from ekd.md.boxes import base_box, box_of_size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported model files")
    parser.add_argument("--a", type=Path, required=True, help="checkout of build A (e.g. before)")
    parser.add_argument("--b", type=Path, required=True, help="checkout of build B (e.g. after)")
    parser.add_argument("--data", type=Path, required=True, help="molecules to build the boxes from")
    parser.add_argument("--sizes", default="1000,4000", help="atoms per box (default 1000,4000)")
    parser.add_argument("--density", type=float, default=0.8, help="g/cm³ (default 0.8)")
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="A, B rounds (default 2)")
    parser.add_argument("--out", type=Path, default=Path("plugin_ab"), help="work folder (default plugin_ab/)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    molecules = read(args.data, index=":")
    base = base_box(molecules, copies=max(1, 120 // sum(len(m) for m in molecules)), density=args.density)
    boxes = [box_of_size(base, int(n)) for n in args.sizes.split(",")]
    builds = {"A": args.a.resolve(), "B": args.b.resolve()}
    best: Dict[str, Dict[str, float]] = {}
    for repeat in range(args.repeats):
        for name, checkout in builds.items():
            os.environ["PYTHONPATH"] = str(checkout / "python")   # read by the lmp children only
            for model in args.models:
                elements = read_metadata(model).elements
                for box in boxes:
                    key = f"{model.stem}@{len(box)}"
                    result = run_md(args.out / f"{name}{repeat}_{key}", model, box, elements, ranks=1, threads=1,
                                    steps=args.steps, warmup=args.warmup)
                    if not result.ok:
                        raise SystemExit(f"build {name} ({checkout}), {key}: {result.error}")
                    row = best.setdefault(key, {})
                    row[name] = max(row.get(name, 0.0), result.katom_step_per_s)
                    row[f"{name}_peak_mb"] = min(row.get(f"{name}_peak_mb", float("inf")), result.peak_rss_mb)
                    print(f"round {repeat} build {name} {key}: {result.katom_step_per_s:.2f} katom-step/s, "
                          f"{result.peak_rss_mb:.0f} MB", flush=True)
    lines: List[str] = ["| model @ atoms | A katom-step/s | B katom-step/s | B / A | A MB | B MB |",
                        "|---|---:|---:|---:|---:|---:|"]
    for key, row in best.items():
        lines.append(f"| {key} | {row['A']:.2f} | {row['B']:.2f} | {row['B'] / row['A']:.3f} | "
                     f"{row['A_peak_mb']:.0f} | {row['B_peak_mb']:.0f} |")
    print("\n".join(lines))
    (args.out / "plugin_ab.json").write_text(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
