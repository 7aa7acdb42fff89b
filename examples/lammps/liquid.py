#!/usr/bin/env python
"""Liquid water with an exported model in LAMMPS: does it stay molecular, does NVE conserve
energy, and where is the O–O radial distribution's first peak?

    python examples/lammps/liquid.py MODEL.pt [--waters 512] [--density 0.997] [--temperature 300]
                                    [--nvt-ps 2] [--nve-ps 20] [--timestep 0.5] [--minimize-steps 500]
                                    [--out DIR]

A cubic box of `--waters` water molecules (the lowest-energy water of the embedded data, randomly
oriented on a lattice) at the experimental density is relaxed (at most `--minimize-steps` of
conjugate gradients), then runs `--nvt-ps` of Nosé–Hoover NVT at
`--temperature`, then `--nve-ps` of NVE through `pair_style ekd`. Judged afterwards from the log,
a dump every 0.25 ps and the averaged O–O g(r):
- molecular: every H stays nearest to its own O and every O–H bond between 1/1.6 and 1.6× its
  start (docs/stability.md's stretch factor; a hydrogen falling into its own oxygen is a failure
  too, one the stretch alone misses); the smallest O–O and H···O distances between molecules;
  the pair style's short-distance warning;
- energy: drift of the NVE total energy (linear fit, meV/atom/ps) and its largest excursion;
- structure: g_OO first peak beside experiment (X-ray, 295 K: 2.80 Å, height 2.57;
  Skinner et al., J. Chem. Phys. 138, 074506 (2013));
- coordination: neighbours per atom within the model's cutoff, the environment size the model
  must handle (a liquid has several times more than any molecule or small cluster of the
  training data: docs/results.md, "Towards liquid water").
Writes DIR/liquid.json and prints a summary; exit code 0 when the liquid stayed molecular and
every step ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from ekd.data import DataSpec, read_data
from ekd.data.neighbors import neighbor_list
from ekd.export import read_metadata
from ekd.md.boxes import base_box, representative_molecules
from ekd.md.lammps_driver import (dump_lines, last_run, neighbor_lines, pair_lines, read_dump, read_thermo,
                                  relaxation_lines, run_lammps, system_lines, thermo_lines, write_data)

EMBEDDED = Path(__file__).resolve().parents[2] / "python" / "ekd" / "embedded" / "chno_ccsdt.h5"
EXPERIMENT = {"r": 2.80, "g": 2.57, "source": "X-ray, 295 K, Skinner et al. J. Chem. Phys. 138, 074506 (2013)"}
STRETCH = 1.6          # docs/stability.md: a bond longer than this x its start, or shorter than its start / this, has broken
DUMP_PS = 0.25
RDF_BINS = 200         # g_OO(r) bins from 0 to 6 Å
RDF_EVERY = 20         # steps between g(r) samples; both run lengths are whole multiples of it


def water_box(waters: int, density: float, seed: int) -> "Atoms":  # noqa: F821
    data = read_data(DataSpec(path=str(EMBEDDED), energy_key="ccsd(t)_dz.energy", energy_unit="Hartree"))
    water = next(m for m in representative_molecules(data) if m.get_chemical_formula() == "H2O")
    return base_box([water], copies=waters, density=density, seed=seed)


def deck(model: Path, elements: list, args: argparse.Namespace, nvt: int, nve: int, dump_every: int) -> str:
    oxygen = elements.index("O") + 1
    dt = args.timestep / 1000.0                       # metal units: ps
    return "\n".join([
        system_lines(data="box.data"), pair_lines(model.resolve(), elements), neighbor_lines(),
        f"timestep {dt}",
        thermo_lines(["step", "time", "temp", "pe", "ke", "etotal", "press"], every=max(1, nve // 400), digits=12),
        # the lattice start is far from any minimum (the first 512-water run released 0.2 eV per
        # atom within 50 fs, a spike to 1,500 K): relax it before the thermostat has to remove it
        relaxation_lines(args.minimize_steps),
        f"velocity all create {args.temperature} {args.seed + 1} mom yes rot yes dist gaussian",
        dump_lines("frames", "frames.dump", dump_every, ["id", "x", "y", "z"], 10),
        f"fix nvt all nvt temp {args.temperature} {args.temperature} 0.1",
        f"run {nvt}", "unfix nvt",
        "comm_modify cutoff 7.5",  # g(r) to 6 Å + skin needs ghosts beyond the model's cutoff
        f"compute rdf all rdf {RDF_BINS} {oxygen} {oxygen} cutoff 6.0",
        # one average over the NVE run, written at its last step (outputs fall on multiples of Nfreq)
        f"fix rdf all ave/time {RDF_EVERY} {nve // RDF_EVERY} {nvt + nve} c_rdf[*] file rdf.txt mode vector",
        "fix nve all nve", f"run {nve}", ""])


def molecular(frames: dict, species: np.ndarray, cell: float) -> dict:
    """Per dumped frame: H atoms nearest to another molecule's O, broken O–H bonds, and the
    smallest intermolecular O–O and H···O distances (minimum image)."""
    molecule = np.arange(len(species)) // 3               # base_box writes each water's 3 atoms together
    oxygens, hydrogens = np.flatnonzero(species == 8), np.flatnonzero(species == 1)
    own = np.array([oxygens[molecule[oxygens] == molecule[h]][0] for h in hydrogens])
    rows, first = [], None
    for step, table in sorted(frames.items()):
        x = table[:, 1:4]
        d_ho = x[hydrogens][:, None, :] - x[oxygens][None, :, :]
        d_ho = np.linalg.norm(d_ho - cell * np.round(d_ho / cell), axis=2)
        d_oo = x[oxygens][:, None, :] - x[oxygens][None, :, :]
        d_oo = np.linalg.norm(d_oo - cell * np.round(d_oo / cell), axis=2)
        np.fill_diagonal(d_oo, np.inf)
        bond = d_ho[np.arange(len(hydrogens)), np.searchsorted(oxygens, own)]
        first = bond if first is None else first
        other = d_ho.copy()
        other[np.arange(len(hydrogens)), np.searchsorted(oxygens, own)] = np.inf
        rows.append({"step": int(step), "h_elsewhere": int((other.min(axis=1) < bond).sum()),
                     "broken_bonds": int((bond > STRETCH * first).sum()),
                     "collapsed_bonds": int((bond < first / STRETCH).sum()), "min_o_h_bond": float(bond.min()),
                     "min_oo": float(d_oo.min()), "min_h_o_between": float(other.min())})
    intact = all(r["h_elsewhere"] == 0 and r["broken_bonds"] == 0 and r["collapsed_bonds"] == 0 for r in rows)
    return {"frames": rows, "stayed_molecular": intact}


def coordination(frames: dict, cell: float, cutoff: float) -> dict:
    """Neighbours per atom within `cutoff` (every periodic image: the pair style's graph), mean and
    largest over the dumped frames."""
    counts = []
    for _, table in sorted(frames.items()):
        receivers = neighbor_list(table[:, 1:4], np.eye(3) * cell, np.ones(3, dtype=bool), cutoff)[0]
        counts.append(np.bincount(receivers, minlength=len(table)))
    if not counts:
        return {}
    counts = np.concatenate(counts)
    return {"cutoff": cutoff, "mean": float(counts.mean()), "max": int(counts.max())}


def relaxation(log: str, n_atoms: int) -> dict:
    """How far the start fell in energy while relaxed (meV/atom), and whether it converged."""
    found = re.search(r"Energy initial, next-to-last, final =\s+(\S+)\s+\S+\s+(\S+)", log)
    if found is None:
        return {}
    stop = re.search(r"Stopping criterion = (.+)", log)
    return {"energy_drop_meV_per_atom": (float(found.group(1)) - float(found.group(2))) / n_atoms * 1e3,
            "stopped": stop.group(1).strip() if stop else None}


def energy_drift(log: str, nve_start_time: float, n_atoms: int) -> dict:
    thermo = last_run(read_thermo(log))
    time, etotal = thermo.column("Time"), thermo.column("TotEng")
    nve = time >= nve_start_time - 1e-9
    if nve.sum() < 3:
        return {}
    t, e = time[nve] - time[nve][0], etotal[nve] / n_atoms * 1e3        # ps, meV/atom
    slope = float(np.polyfit(t, e, 1)[0])
    return {"drift_meV_per_atom_ps": slope, "max_excursion_meV_per_atom": float(np.abs(e - e[0]).max()),
            "temperature_nve_mean_K": float(thermo.column("Temp")[nve].mean()), "ps": float(t[-1])}


def first_peak(path: Path) -> dict:
    """r and g of the largest g_OO(r) below 3.3 Å (the first shell), from fix ave/time's last block."""
    if not path.exists():
        return {}
    lines = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    if len(lines) < RDF_BINS + 1:
        return {}
    table = np.array([[float(v) for v in row] for row in lines[-RDF_BINS:]])    # the last block's rows
    r, g = table[:, 1], table[:, 2]
    shell = r < 3.3
    if not shell.any():
        return {}
    k = int(np.argmax(np.where(shell, g, -1)))
    return {"r": float(r[k]), "g": float(g[k]), "experiment": EXPERIMENT,
            "curve": {"r": r.round(4).tolist(), "g": g.round(4).tolist()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="exported model (.pt) of H and O at least")
    parser.add_argument("--waters", type=int, default=512, help="water molecules (default 512: 1,536 atoms)")
    parser.add_argument("--density", type=float, default=0.997, help="g/cm³ (default 0.997, 298 K)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    parser.add_argument("--nvt-ps", type=float, default=2.0, help="NVT equilibration, ps (default 2)")
    parser.add_argument("--nve-ps", type=float, default=20.0, help="NVE production, ps (default 20)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--minimize-steps", type=int, default=500,
                        help="relax the lattice start for at most this many steps before MD (default 500; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/liquid"), help="folder (default runs/liquid)")
    args = parser.parse_args()
    metadata = read_metadata(args.model)
    elements = metadata.elements
    if not {"H", "O"} <= set(elements):
        print(f"{args.model}: knows {' '.join(elements)}; water needs H and O", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    box = water_box(args.waters, args.density, args.seed)
    write_data(args.out / "box.data", box, elements)
    per_ps = int(round(1000.0 / args.timestep))
    nvt, nve = (max(1, round(ps * per_ps / RDF_EVERY)) * RDF_EVERY for ps in (args.nvt_ps, args.nve_ps))
    dump_every = max(1, int(DUMP_PS * per_ps))
    (args.out / "in.liquid").write_text(deck(args.model, elements, args, nvt, nve, dump_every))
    print(f"{len(box)} atoms ({args.waters} waters) in a {box.cell[0, 0]:.2f} Å box at {args.density} g/cm³; "
          f"{args.nvt_ps} ps NVT + {args.nve_ps} ps NVE at {args.timestep} fs; in {args.out}", flush=True)
    run = run_lammps(args.out / "in.liquid")
    frames = read_dump(args.out / "frames.dump")
    result = {"model": str(args.model), "atoms": len(box), "waters": args.waters, "density": args.density,
              "temperature": args.temperature, "timestep_fs": args.timestep, "completed": run.ok,
              "error": None if run.ok else run.error, "short_distance_warning": "closer than" in run.log,
              "relaxation": relaxation(run.log, len(box)),
              "molecular": molecular(frames, box.numbers, float(box.cell[0, 0])),
              "neighbours": coordination(frames, float(box.cell[0, 0]), metadata.cutoff),
              "energy": energy_drift(run.log, nvt * args.timestep / 1000.0, len(box)),
              "g_oo_first_peak": first_peak(args.out / "rdf.txt")}
    (args.out / "liquid.json").write_text(json.dumps(result, indent=1))
    summarise(result)
    return 0 if run.ok and result["molecular"]["stayed_molecular"] and not result["short_distance_warning"] else 1


def summarise(result: dict) -> None:
    m, e, g = result["molecular"], result["energy"], result["g_oo_first_peak"]
    last = m["frames"][-1] if m["frames"] else {}
    print(f"completed: {result['completed']}" + (f" ({result['error']})" if result["error"] else ""))
    if result["relaxation"]:
        print(f"relaxation of the start: {result['relaxation']['energy_drop_meV_per_atom']:.1f} meV/atom down "
              f"(stopped: {result['relaxation']['stopped']})")
    print(f"stayed molecular: {m['stayed_molecular']} over {len(m['frames'])} frames; short-distance warning: "
          f"{result['short_distance_warning']}")
    if m["frames"]:
        print(f"  smallest O-O between molecules {min(r['min_oo'] for r in m['frames']):.2f} Å, H...O "
              f"{min(r['min_h_o_between'] for r in m['frames']):.2f} Å, O-H bond "
              f"{min(r['min_o_h_bond'] for r in m['frames']):.2f} Å; last frame: {last}")
    if result["neighbours"]:
        n = result["neighbours"]
        print(f"neighbours within the model's {n['cutoff']:g} Å cutoff: {n['mean']:.1f} per atom on average, "
              f"at most {n['max']}")
    if e:
        print(f"NVE: drift {e['drift_meV_per_atom_ps']:+.3f} meV/atom/ps, largest excursion "
              f"{e['max_excursion_meV_per_atom']:.2f} meV/atom over {e['ps']:.1f} ps, mean T {e['temperature_nve_mean_K']:.0f} K")
    if g:
        print(f"g_OO first peak: {g['g']:.2f} at {g['r']:.2f} Å (experiment {EXPERIMENT['g']} at {EXPERIMENT['r']} Å)")


if __name__ == "__main__":
    sys.exit(main())
