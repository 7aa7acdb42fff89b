"""`python -m ekd.stability MODEL... --molecules FILE [options]`: how long MD stays intact.

Runs many short Langevin NVT trajectories per exported model (one per molecule and seed, the
same starts for every model) with the ASE calculator, stops each at the first failure (broken
bond, atom flown off, non-finite energy or energy jump) and writes stability.json,
stability.md and survival.png (Kaplan–Meier survival per model) to --out (default
`stability/`). Every finished trajectory is kept in progress.json as it ends: the same command
run again after a kill reuses them. The criterion and every option: docs/stability.md.

Exit codes: 0 done (whatever the models' survival); 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..data import DataSpec, read_data
from ..data.readers import FORMATS
from ..errors import EkdError
from .box import RELAX_STEPS, BoxSettings
from .criterion import FailureCriterion
from .report import markdown
from .run import StabilityRequest, pick_molecules, run_stability
from .trajectories import MDSettings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults, criterion = MDSettings(), FailureCriterion()
    parser = argparse.ArgumentParser(prog="python -m ekd.stability", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="exported model files")
    parser.add_argument("--molecules", type=Path, required=True,
                        help="starting structures: any data file ekd reads (one molecule per group/formula)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="layout of the molecules file")
    parser.add_argument("--energy-key", default="", help="energy property of the molecules file")
    parser.add_argument("--energy-unit", default="", help="unit of its energies")
    parser.add_argument("--pick", default="lowest", choices=("lowest", "first", "all"),
                        help="per molecule the lowest-energy (default) or first conformation, or all conformations")
    parser.add_argument("--max-molecules", type=int, default=0, help="use only the first N molecules (0: all)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="K (default 500)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="MD steps per trajectory (default 4000)")
    parser.add_argument("--timestep", type=float, default=defaults.timestep, help="fs (default 0.25)")
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="trajectories per molecule (default 5)")
    parser.add_argument("--friction", type=float, default=defaults.friction, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--stretch-factor", type=float, default=criterion.stretch_factor,
                        help="a bond longer than this x its initial length has broken (default 1.6)")
    parser.add_argument("--isolation", type=float, default=criterion.isolation,
                        help="Å; an atom farther than this from every other atom has flown off (default 4)")
    parser.add_argument("--energy-jump", type=float, default=criterion.energy_jump,
                        help="eV per atom; a larger energy change in one step is a failure (default 0.1)")
    parser.add_argument("--lammps-box", type=int, default=0, metavar="N",
                        help="also run a periodic box of about N atoms of the molecules in LAMMPS (pair_style ekd), "
                             "one run per seed (default 0: no box)")
    parser.add_argument("--density", type=float, default=0.9, help="mass density of the LAMMPS box, g/cm³ (default 0.9)")
    parser.add_argument("--box-relax-steps", type=int, default=RELAX_STEPS, metavar="N",
                        help=f"relax the box's packed start for at most N conjugate-gradient steps before its MD "
                             f"(default {RELAX_STEPS}; 0: none)")
    parser.add_argument("--out", type=Path, default=Path("stability"), help="output folder (default stability/)")
    # One thread: a molecule of a few atoms gives threads nothing to share, and on a busy machine
    # their synchronisation made a 9-atom step 10-40x slower (5 ms → 50-350 ms, measured).
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's default, all cores)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        data = read_data(DataSpec(path=str(args.molecules), format=args.format, energy_key=args.energy_key,
                                  energy_unit=args.energy_unit))
        request = StabilityRequest(
            models=list(args.models), molecules=pick_molecules(data, args.pick, args.max_molecules), out=args.out,
            md=MDSettings(args.temperature, args.steps, args.timestep, args.friction, args.seeds),
            criterion=FailureCriterion(stretch_factor=args.stretch_factor, isolation=args.isolation,
                                       energy_jump=args.energy_jump),
            source=str(args.molecules),
            box=BoxSettings(atoms=args.lammps_box, density=args.density, relax_steps=args.box_relax_steps))
        report = run_stability(request)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(report))
    print(f"wrote {args.out / 'stability.md'}, stability.json and survival.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
