"""MD benchmarks of exported models in LAMMPS: `python -m ekd.bench` (see __main__.py)."""
