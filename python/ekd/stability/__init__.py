"""MD stability of exported models: many short NVT trajectories, a failure criterion, survival
(`python -m ekd.stability`, docs/stability.md).

A potential can have small test errors and still be useless in molecular dynamics: a hole in
the energy surface, or a region it never saw, and a molecule falls apart within picoseconds.
This package measures that directly, one file per job:

    criterion.py     when a trajectory has failed (`frame_failure` one step, `first_failure` a
                     whole trajectory, `sampled_failure` a run with sparse frames)
    trajectories.py  Langevin NVT of single molecules with the ASE calculator, the same starts
                     for every model
    box.py           a periodic box of the molecules in LAMMPS (`--lammps-box`)
    run.py           the study: request, starting molecules, every model's trajectories
    progress.py      finished trajectories kept as they end: a killed study resumes
    report.py        Kaplan–Meier survival, stability.json, stability.md, survival.png
    __main__.py      the command line
"""

from .box import BoxSettings
from .criterion import Bonds, Failure, FailureCriterion, covalent_bonds, first_failure, frame_failure
from .report import kaplan_meier, markdown, median_survival
from .run import StabilityRequest, pick_molecules, run_stability
from .trajectories import MDSettings, Molecule, TrajectoryResult, run_trajectory

__all__ = ["BoxSettings", "Bonds", "Failure", "FailureCriterion", "covalent_bonds", "first_failure", "frame_failure",
           "kaplan_meier", "markdown", "median_survival", "StabilityRequest", "pick_molecules", "run_stability",
           "MDSettings", "Molecule", "TrajectoryResult", "run_trajectory"]
