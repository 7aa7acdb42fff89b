"""Sanity check of the augmented labels against a physical potential (GFN2-xTB via tblite).

The teachers' labels on conformations the reference never computed cannot be checked against
CCSD(T) cheaply. GFN2-xTB is another level of theory, so its forces differ from CCSD(T)'s even
where the teachers are right; what this script reports is *relative*: the RMS difference between
the ensemble-mean forces and xTB's on a sample of the run's own training conformations (where
the labels are as good as the data make them) beside the same on samples of each generator's
augmented conformations, and whether the teachers' spread ranks the conformations whose labels
differ most (Spearman ρ of per-conformation max spread against RMS difference). Where the data
have reference forces (the test split of the embedded set), the reference's own difference to
xTB is printed too: the floor set by the two levels of theory. Never training data. Needs
`pip install tblite`.

Usage: python examples/studies/augment_labels_xtb.py RUN_DIR [--sample 100] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms
from tblite.ase import TBLite

from ekd.config import load_config
from ekd.data import read_data
from ekd.distill import read_labels
from ekd.run_layout import RunLayout


def xtb_forces(numbers: np.ndarray, positions: np.ndarray, calculator: TBLite) -> np.ndarray | None:
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = calculator
    try:
        return atoms.get_forces()
    except Exception:  # SCF not converged: counted, not used
        return None


def compare(numbers, positions, offsets, forces, spread, rows, calculator) -> dict:
    """RMS |F_label − F_xTB| per conformation of `rows`, and the per-conformation max spread."""
    differences, spreads, failed = [], [], 0
    for c in rows:
        atoms = slice(offsets[c], offsets[c + 1])
        reference = xtb_forces(numbers[atoms], positions[atoms], calculator)
        if reference is None:
            failed += 1
            continue
        differences.append(np.sqrt(np.mean(np.sum((forces[atoms] - reference) ** 2, axis=1))))
        spreads.append(spread[atoms].max())
    d, s = np.array(differences), np.array(spreads)
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    rho = float(np.corrcoef(rank(d), rank(s))[0, 1]) if len(d) > 2 else float("nan")
    return {"n": len(d), "failed": failed, "rms": float(np.sqrt(np.mean(d ** 2))), "median": float(np.median(d)),
            "spread_median": float(np.median(s)), "rho": rho}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sample", type=int, default=100, help="conformations per set (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layout = RunLayout(args.run)
    config = load_config(layout.config_path)
    data = read_data(config.data)
    labels = read_labels(layout.labels_path)
    split = __import__("json").loads(layout.split_path.read_text())
    rng = np.random.default_rng(args.seed)
    calculator = TBLite(method="GFN2-xTB", verbosity=0)
    rows = np.sort(rng.choice(split["train"], size=min(args.sample, len(split["train"])), replace=False))
    results = {"training conformations": compare(data.species, data.positions, data.offsets, labels.forces_mean,
                                                 labels.forces_std, rows, calculator)}
    with_forces = np.intersect1d(split["test"], np.flatnonzero(data.has_forces))
    if len(with_forces):  # the floor: the data's own forces against xTB, where the data have forces
        rows = np.sort(rng.choice(with_forces, size=min(args.sample, len(with_forces)), replace=False))
        results["test conformations, ensemble"] = compare(data.species, data.positions, data.offsets,
                                                          labels.forces_mean, labels.forces_std, rows, calculator)
        results["test conformations, reference forces"] = compare(data.species, data.positions, data.offsets,
                                                                  data.forces, labels.forces_std, rows, calculator)
    with h5py.File(layout.augmented_path) as h5:
        n_atoms = h5["n_atoms"][()]
        offsets = np.concatenate([[0], np.cumsum(n_atoms)])
        generator, setting = h5["generator"][()], h5["setting"][()]
        names = [str(g) for g in h5.attrs["generators"]]
        arrays = [h5[k][()] for k in ("species", "positions", "forces_mean", "forces_std")]
    for g, value in sorted({(int(a), float(b)) for a, b in zip(generator, setting)}):
        members = np.flatnonzero((generator == g) & (setting == value))
        rows = np.sort(rng.choice(members, size=min(args.sample, len(members)), replace=False))
        unit = "Å" if names[g] == "displaced" else "K"
        results[f"{names[g]} {value:g} {unit}"] = compare(arrays[0], arrays[1], offsets, arrays[2], arrays[3], rows,
                                                          calculator)
    print("| conformations | n (SCF failed) | RMS |F_ens − F_xTB| (eV/Å) | median | median max spread | ρ(spread, diff) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['n']} ({r['failed']}) | {r['rms']:.3f} | {r['median']:.3f} | {r['spread_median']:.3f} | "
              f"{r['rho']:.2f} |")


if __name__ == "__main__":
    main()
