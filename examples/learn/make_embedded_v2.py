#!/usr/bin/env python
"""Version 2 of the embedded data set: version 1 plus the CCSD(T) conformations that
`python -m ekd.learn examples/learn/embedded.toml --out DIR` added, in version 1's layout.

Every conformation of version 1 is kept as it is, in its group and order; an addition joins the
group of its molecule (appended after version 1's conformations) or, for a cluster, a new group
named by its formula (attrs name: e.g. "(water)2"). Energies are stored in Hartree under
`ccsd(t)_dz.energy` like version 1's; added conformations have NaN `ccsd(t)_dz.forces` (the
loop computes energies only), so `[split] test_selection = "has_forces"` keeps version 1's test
set. GFN2-xTB energies and forces (tblite) are computed for the additions, as for version 1.
Provenance of every conformation (`provenance.*` datasets, round 0 = version 1) and the loop's
configuration (file attrs) are inside the file.

    python examples/learn/make_embedded_v2.py DIR [--out python/ekd/embedded/chno_ccsdt_v2.h5]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms
from ase.symbols import Symbols
from tblite.ase import TBLite

from ekd.data.units import HARTREE_EV
from ekd.learn.additions import ADDITIONS_FORMAT

REPO = Path(__file__).resolve().parents[2]
VERSION_1 = REPO / "python" / "ekd" / "embedded" / "chno_ccsdt.h5"
PROVENANCE = ("round", "trajectory", "step", "temperature", "committee_deviation", "reason")


def additions_files(learn_dir: Path) -> list[Path]:
    files = sorted(learn_dir.glob("round_*/additions.h5"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise SystemExit(f"{learn_dir}: no round_*/additions.h5 (run python -m ekd.learn first)")
    return files


def gfn2(species: np.ndarray, coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    calculator = TBLite(method="GFN2-xTB", verbosity=0)
    energies, forces = [], []
    for x in coordinates:
        atoms = Atoms(numbers=species, positions=x)
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), np.array(forces)


def collect(files: list[Path]) -> dict[tuple[str, tuple[int, ...]], dict[str, list[np.ndarray]]]:
    """Every addition, by (molecule or cluster name, atom order)."""
    out: dict[tuple[str, tuple[int, ...]], dict[str, list[np.ndarray]]] = {}
    for path in files:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != ADDITIONS_FORMAT:
                raise SystemExit(f"{path}: not an ekd additions file")
            for group in h5.values():
                key = (str(group.attrs["name"]), tuple(int(z) for z in group["atomic_numbers"][()]))
                entry = out.setdefault(key, {})
                for name in ("coordinates", "energy", "forces", *PROVENANCE):
                    entry.setdefault(name, []).append(group[name][()])
    return out


def write(out: Path, learn_dir: Path, files: list[Path]) -> None:
    additions = collect(files)
    added = sum(int(np.concatenate(entry["energy"]).size) for entry in additions.values())
    writing = out.with_name(out.name + ".writing")
    with h5py.File(VERSION_1, "r") as old, h5py.File(writing, "w") as new:
        by_name = {str(old[g].attrs.get("name", g)): g for g in old}
        for label, group in old.items():
            target = new.create_group(label)
            target.attrs.update(group.attrs)
            name = str(group.attrs.get("name", label))
            species = tuple(int(z) for z in group["atomic_numbers"][()])
            extra = additions.pop((name, species), None)
            n_old = group["coordinates"].shape[0]
            arrays = {key: group[key][()] for key in group}
            arrays.update({f"provenance.{key}": np.full(n_old, -1 if key != "round" else 0,
                                                        dtype=np.float64 if key in ("temperature", "committee_deviation")
                                                        else np.int64) for key in PROVENANCE})
            if extra is not None:
                arrays = extend(arrays, extra, np.array(species))
            for key, value in arrays.items():
                target.create_dataset(key, data=value)
        for (name, species), extra in additions.items():  # clusters and any molecule version 1 lacks
            label = Symbols(np.array(species)).get_chemical_formula()
            if name in by_name or label in new:
                label = f"{label}_{name}".replace("/", "_")
            target = new.create_group(label)
            target.attrs["name"] = name
            empty = {"atomic_numbers": np.array(species), "coordinates": np.zeros((0, len(species), 3)),
                     "ccsd(t)_dz.energy": np.zeros(0), "ccsd(t)_dz.forces": np.zeros((0, len(species), 3)),
                     "gfn2.energy": np.zeros(0), "gfn2.forces": np.zeros((0, len(species), 3)),
                     **{f"provenance.{key}": np.zeros(0) for key in PROVENANCE}}
            for key, value in extend(empty, extra, np.array(species)).items():
                target.create_dataset(key, data=value)
        new.attrs.update(old.attrs)
        config = (learn_dir / "learn.toml").read_text()
        new.attrs.update({
            "version": 2, "date": time.strftime("%Y-%m-%d"), "learn_config": config,
            "description": str(old.attrs["description"]) + (
                f" Version 2 adds {added} conformations from {len(files)} rounds of active learning "
                "(python -m ekd.learn, examples/learn/embedded.toml): frames of the distilled student's 500 K "
                "Langevin MD of the molecules and of water/methanol dimers where the teacher ensemble disagreed, "
                "or just before a trajectory broke, with CCSD(T)/cc-pVDZ (frozen core) energies from PySCF "
                "(no CCSD(T) forces: NaN). provenance.round is 0 for version 1's conformations."),
        })
    os.replace(writing, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {added} conformations added)")


def extend(arrays: dict[str, np.ndarray], extra: dict[str, list[np.ndarray]], species: np.ndarray) -> dict[str, np.ndarray]:
    coordinates = np.concatenate(extra["coordinates"])
    gfn2_energy, gfn2_forces = gfn2(species, coordinates)
    grown = dict(arrays)
    grown["coordinates"] = np.concatenate([arrays["coordinates"], coordinates])
    grown["ccsd(t)_dz.energy"] = np.concatenate([arrays["ccsd(t)_dz.energy"],
                                                 np.concatenate(extra["energy"]) / HARTREE_EV])
    grown["ccsd(t)_dz.forces"] = np.concatenate([arrays["ccsd(t)_dz.forces"],
                                                 np.concatenate(extra["forces"]) / HARTREE_EV])
    grown["gfn2.energy"] = np.concatenate([arrays["gfn2.energy"], gfn2_energy])
    grown["gfn2.forces"] = np.concatenate([arrays["gfn2.forces"], gfn2_forces])
    for key in PROVENANCE:
        grown[f"provenance.{key}"] = np.concatenate([arrays[f"provenance.{key}"], np.concatenate(extra[key])])
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("learn_dir", type=Path, help="the directory of python -m ekd.learn")
    parser.add_argument("--out", type=Path, default=REPO / "python" / "ekd" / "embedded" / "chno_ccsdt_v2.h5")
    args = parser.parse_args()
    write(args.out, args.learn_dir, additions_files(args.learn_dir))


if __name__ == "__main__":
    main()
