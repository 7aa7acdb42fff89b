"""Control for the stability protocol: the same NVT trajectories with GFN2-xTB (tblite), a
physical potential, must not fail. Needs `pip install tblite` (the embedded data generator's
dependency). Usage: python examples/studies/xtb_control.py [--steps 2000] [--seeds 2]"""

from __future__ import annotations

import argparse

from tblite.ase import TBLite

from ekd.config import EMBEDDED_DATA
from ekd.data import DataSpec, read_data
from ekd.stability import FailureCriterion, MDSettings, pick_molecules, run_trajectory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=500.0)
    args = parser.parse_args()
    data = read_data(DataSpec(path=str(EMBEDDED_DATA), energy_key="ccsd(t)_dz.energy"))
    calculator = TBLite(method="GFN2-xTB", verbosity=0)
    md = MDSettings(temperature=args.temperature, steps=args.steps)
    for index, molecule in enumerate(pick_molecules(data, "lowest")):
        for seed in range(args.seeds):
            result = run_trajectory(calculator, molecule, index, seed, md, FailureCriterion())
            print(f"{molecule.name} seed {seed}: {'survived' if result.survived else 'FAILED: ' + result.reason} "
                  f"({result.time_ps} ps)", flush=True)


if __name__ == "__main__":
    main()
