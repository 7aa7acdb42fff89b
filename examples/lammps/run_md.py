"""Export the demo student, build a periodic box of the run's molecules, run in.md in LAMMPS.

    python examples/lammps/run_md.py [RUN_DIR] [--atoms 1000] [--ranks 1] [--density 0.01] [--uncertainty]

Writes student.pt and box.data next to in.md (in examples/lammps/), then runs `lmp` (or
`mpirun -np N lmp`) there and prints LAMMPS's Performance line. With --uncertainty it also
exports the run's teacher ensemble as committee.pt and runs in.uncertainty instead: the student
drives, the committee's per-atom force deviation is printed, uncertain frames are dumped and the
run halts past a threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ekd.config import load_config
from ekd.data import read_data
from ekd.export import export_model
from ekd.run_layout import RunLayout, checkpoints_for
from ekd.md.boxes import base_box, box_of_size, representative_molecules
from ekd.md.lammps_driver import lammps_command, run_lammps, write_data

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("runs/default"), help="run directory")
    parser.add_argument("--atoms", type=int, default=1000, help="approximate number of atoms (default 1000)")
    parser.add_argument("--ranks", type=int, default=1, help="MPI ranks (default 1)")
    parser.add_argument("--model", default="student", help="model of the run to export (default student)")
    # The embedded data hold isolated molecules only: a model trained on them has never seen two
    # molecules within its cutoff, so a liquid is outside its domain (measured with the demo
    # student: at 0.9 g/cm³ molecules fuse; at 0.1 g/cm³ the NVE part heats from 300 to 1700 K).
    # At 0.01 g/cm³ molecules start ~20 Å apart and rarely meet within the run.
    parser.add_argument("--density", type=float, default=0.01,
                        help="mass density of the box in g/cm³ (default 0.01: molecules ~20 Å apart, because the "
                             "embedded data are isolated molecules; use ~0.9 for models trained on liquids)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="run in.uncertainty with the teacher ensemble as committee (exported to committee.pt)")
    args = parser.parse_args()
    model = HERE / f"{args.model}.pt"
    metadata = export_model(checkpoints_for(args.run, args.model), model, torch.float32)
    variables = {"model": model.name}
    if args.uncertainty:
        export_model(checkpoints_for(args.run, "ensemble"), HERE / "committee.pt", torch.float32)
        variables["committee"] = "committee.pt"
    molecules = representative_molecules(read_data(load_config(RunLayout(args.run).config_path).data))
    box = box_of_size(base_box(molecules, copies=max(1, 120 // sum(len(m) for m in molecules)), density=args.density),
                      args.atoms)
    write_data(HERE / "box.data", box, metadata.elements)
    deck = (HERE / ("in.uncertainty" if args.uncertainty else "in.md")).read_text()
    generated = "in.generated.uncertainty" if args.uncertainty else "in.generated.md"
    (HERE / generated).write_text(deck.replace("pair_coeff      * * H C N O",
                                               "pair_coeff      * * " + " ".join(metadata.elements)))
    command = lammps_command(generated, args.ranks, echo=True, variables=variables)
    print(f"{len(box)} atoms, {' '.join(metadata.elements)}; running: {' '.join(command)}", flush=True)
    return run_lammps(HERE / generated, args.ranks, echo=True, variables=variables).returncode


if __name__ == "__main__":
    sys.exit(main())
