"""What two processes can gain on this machine: one single-rank LAMMPS run alone, then two
identical single-rank runs at the same time, side by side, several times.

    python examples/bench/parallel_ceiling.py student.pt --data ethanol.xyz --size 8000

Both runs of a pair share the machine's memory bandwidth and caches, as the two ranks of
`mpirun -np 2` do, but exchange nothing and evaluate no ghost atoms: their summed throughput
over the lone run's is the most any two-rank decomposition can reach here. `python -m ekd.bench
... --ranks 1,2` gives the real two-rank figure to hold against it.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Dict

from ase.data import atomic_numbers
from ase.io import read

from ekd.bench.timed_md import MDResult, run_md
from ekd.md.boxes import base_box, box_of_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model (.pt)")
    parser.add_argument("--data", type=Path, required=True, help="molecules for the box (any file ase.io reads)")
    parser.add_argument("--size", type=int, default=8000, help="approximate atoms per run (default 8000)")
    parser.add_argument("--density", type=float, default=0.9,
                        help="mass density of the box, g/cm³ (default 0.9, as python -m ekd.bench)")
    parser.add_argument("--steps", type=int, default=20, help="timed MD steps (default 20)")
    parser.add_argument("--trials", type=int, default=3, help="alone/pair trials (default 3)")
    parser.add_argument("--out", type=Path, default=Path("parallel_ceiling"), help="work folder")
    args = parser.parse_args()

    molecules = read(args.data, index=":")
    atoms_per_set = sum(len(m) for m in molecules)
    atoms = box_of_size(base_box(molecules, copies=max(1, 120 // atoms_per_set), density=args.density), args.size)
    elements = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atomic_numbers[s])
    print(f"{len(atoms)} atoms per run, {args.steps} timed steps")
    for trial in range(args.trials):
        alone = run_md(args.out / f"alone_{trial}", args.model, atoms, elements, 1, 1, args.steps, 3)
        pair: Dict[int, MDResult] = {}

        def run(k: int) -> None:
            pair[k] = run_md(args.out / f"pair_{trial}_{k}", args.model, atoms, elements, 1, 1, args.steps, 3)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r.error for r in (alone, pair[0], pair[1]) if not r.ok]
        if failed:
            raise SystemExit(f"a LAMMPS run failed: {failed[0]}")
        both = pair[0].katom_step_per_s + pair[1].katom_step_per_s
        print(f"trial {trial + 1}: alone {alone.katom_step_per_s:.2f} katom-step/s; two at once "
              f"{pair[0].katom_step_per_s:.2f} + {pair[1].katom_step_per_s:.2f} = {both:.2f}; "
              f"ceiling {both / alone.katom_step_per_s:.2f}x")


if __name__ == "__main__":
    main()
