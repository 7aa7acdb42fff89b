"""ekd: ensemble knowledge distillation of machine-learning interatomic potentials.

Pipeline, one subpackage per step: `ekd.data` → `ekd.models` → `ekd.training` →
`ekd.distill` → `ekd.train` (the whole method) → `ekd.export` → the LAMMPS pair style.
"""

__version__ = "0.1.0"
