"""The per-atom uncertainty of pair_style ekd where the student runs: `fix pair N ekd uncertainty 1`
against the Python reader of the same files (committee deviation, an ensemble alone, the
student's own head), on 1, 2 and 4 ranks, `every N`, `fix halt`, thresholded dumps, and every bad
input's message."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.export import export_model, force_deviation, graph_of, load_exported
from ekd.md.lammps_driver import dump_lines, neighbor_lines, read_dump, read_thermo, system_lines, write_data
from ekd.md.lammps_driver import run_lammps as run_deck
from tests.lammps.conftest import with_metadata
from tests.lammps.lmp import EV_TO_KCAL_MOL, run_lammps

TOL = 1e-10   # float64, LAMMPS vs Python (DESIGN.md §4)
EXAMPLE_DECK = Path(__file__).resolve().parents[2] / "examples" / "lammps" / "in.uncertainty"


@pytest.fixture(scope="module")
def files(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float64 exports of the tiny run: the student (2 layers, cutoff 4.0 A, its own uncertainty
    head), the 2-teacher ensemble (cutoff 4.5 A: the committee) and one teacher (no head, no members)."""
    folder = tmp_path_factory.mktemp("uncertainty_models")
    out = {"student": folder / "student.pt", "ensemble": folder / "ensemble.pt", "teacher": folder / "teacher.pt"}
    teachers = [tiny_run / f"teachers/teacher_{k}/checkpoint.pt" for k in range(2)]
    export_model([tiny_run / "student/checkpoint.pt"], out["student"], torch.float64)
    export_model(teachers, out["ensemble"], torch.float64)
    export_model(teachers[:1], out["teacher"], torch.float64)
    return out


def squeezed(atoms: Atoms) -> Atoms:
    """All atoms in the lower half of x: on `processors 4 1 1` two ranks own nothing."""
    atoms = atoms.copy()
    atoms.positions[:, 0] = atoms.positions[:, 0] * 0.45 + 0.1
    return atoms


# ---- the Python side: the same files through ekd.export ----------------------------------------

def python_graph(path: Path, atoms: Atoms):
    model = load_exported(path)
    species = model.species_index(atoms.get_chemical_symbols()).numpy()
    return model, graph_of(species, atoms.positions, model.metadata.cutoff, np.asarray(atoms.cell))


def python_deviation(path: Path, atoms: Atoms) -> np.ndarray:
    """sqrt(mean_k |F_k - mean F|^2) per atom of an ensemble file's members on the periodic structure."""
    model, g = python_graph(path, atoms)
    members = model.evaluate_members(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)
    return force_deviation(members.forces).numpy()


def python_evaluation(path: Path, atoms: Atoms):
    model, g = python_graph(path, atoms)
    return model.evaluate(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local, uncertainty=True)


# ---- the LAMMPS side ----------------------------------------------------------------------------

def uncertainty_deck(style: str, elements: list[str], run: str = "run 0", every: int = 1, units: str = "metal",
                     processors: str = "", extra: str = "", flag: int = 1) -> str:
    """`pair_style ekd STYLE`, the uncertainty stored by fix pair every `every` steps (`flag` 1: fix
    pair tells the pair style when), its maximum in thermo (c_umax) and the per-atom values with
    forces dumped on the same steps."""
    return "\n".join([
        system_lines(units, atom_modify="map array", processors=processors),
        f"pair_style ekd {style}", f"pair_coeff * * {' '.join(elements)}", neighbor_lines(),
        f"fix u all pair {every} ekd uncertainty {flag}",
        "compute umax all reduce max f_u",
        "variable umax equal c_umax",
        "thermo_style custom step pe c_umax", "thermo_modify format float %.17g", f"thermo {every}",
        dump_lines("d", "u.dump", every, ["id", "f_u", "fx", "fy", "fz"], digits=17),
        extra, run, ""])


def run_uncertainty(folder: Path, atoms: Atoms, style: str, elements: list[str], ranks: int = 1, **deck) -> dict:
    """Write the box, run the deck; per-step dumps (id, u, fx, fy, fz) and thermo c_umax, and the log."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", atoms, elements)
    run = run_lammps(folder, uncertainty_deck(style, elements, **deck), ranks=ranks)
    thermo = read_thermo(run.log)
    return {"frames": read_dump(folder / "u.dump"), "steps": thermo.column("Step").astype(int),
            "umax": thermo.column("c_umax"), "log": run.log}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-30))


def report(what: str, got: np.ndarray, want: np.ndarray) -> None:
    print(f"\nagreement | {what} | uncertainty max {want.max():.3e} eV/A, rel {relative(got, want):.2e}")


# ---- LAMMPS equals Python -----------------------------------------------------------------------

@pytest.mark.parametrize("ranks, processors, option", [
    (1, "", ""), (2, "", ""), (2, "", "exchange no"), (4, "4 1 1", ""), (4, "4 1 1", "exchange no")])
def test_committee_deviation_equals_python(tmp_path: Path, files: dict, box: Atoms, ranks: int, processors: str,
                                           option: str) -> None:
    """The student drives (exchange path, or the ghost-shell path with `exchange no`); the 2-teacher
    committee (another cutoff and receptive field than the student's) gives each atom's force
    deviation, equal to Python's on the full periodic structure; the student's forces are not
    changed by the committee's larger neighbour list. `processors 4 1 1`: two ranks own no atoms."""
    atoms = squeezed(box) if processors else box
    elements = load_exported(files["student"]).elements
    got = run_uncertainty(tmp_path, atoms, f"{files['student']} committee {files['ensemble']} {option}", elements,
                          ranks=ranks, processors=processors)
    want = python_deviation(files["ensemble"], atoms)
    u, forces = got["frames"][0][:, 1], got["frames"][0][:, 2:5]
    report(f"committee deviation, {ranks} rank(s) {processors} {option}", u, want)
    assert want.max() > 1e-4, "the members must disagree"
    assert relative(u, want) <= TOL
    assert abs(got["umax"][0] - want.max()) <= TOL * want.max()
    assert relative(forces, python_evaluation(files["student"], atoms).forces.numpy()) <= TOL
    if ranks > 1:  # the committee (2 layers, no layer()) needs its receptive field as ghost shell
        assert re.search(r"ghost cutoff set to 10.0000 A \(receptive field 9 A of the (model \S+ and )?committee",
                         got["log"])


@pytest.mark.parametrize("ranks, flag", [(1, 1), (2, 1), (1, 0)])
def test_an_ensemble_alone_gives_its_deviation(tmp_path: Path, files: dict, box: Atoms, ranks: int,
                                               flag: int) -> None:
    """An ensemble file drives the dynamics and gives its own members' deviation (ghost-shell path
    on 2 ranks); with fix pair's flag 0 (no trigger) it is computed on every step."""
    elements = load_exported(files["ensemble"]).elements
    got = run_uncertainty(tmp_path, box, str(files["ensemble"]), elements, ranks=ranks, flag=flag)
    want = python_deviation(files["ensemble"], box)
    u = got["frames"][0][:, 1]
    report(f"ensemble alone, {ranks} rank(s)", u, want)
    assert relative(u, want) <= TOL
    assert relative(got["frames"][0][:, 2:5], python_evaluation(files["ensemble"], box).forces.numpy()) <= TOL
    assert "members of" in got["log"]
    assert ("on every step (fix pair flag 0)" in got["log"]) == (flag == 0)


@pytest.mark.parametrize("ranks, option", [(1, ""), (2, ""), (2, "exchange no"), (1, "blocks yes"), (2, "blocks yes")])
def test_the_students_own_uncertainty(tmp_path: Path, files: dict, box: Atoms, ranks: int, option: str) -> None:
    """No committee: the student's distilled head (forward_with_uncertainty, or atom_uncertainty of the
    last layer's features when the layers are exchanged between ranks; with `blocks yes` from the
    blocks' last layer) equals Python's."""
    elements = load_exported(files["student"]).elements
    got = run_uncertainty(tmp_path, box, f"{files['student']} {option}", elements, ranks=ranks)
    want = python_evaluation(files["student"], box).atom_uncertainty.numpy()
    u = got["frames"][0][:, 1]
    report(f"student's own head, {ranks} rank(s) {option}", u, want)
    assert want.min() > 0.0
    assert relative(u, want) <= TOL
    assert "uncertainty head of" in got["log"]


def test_extract_pair_gives_the_maximum_and_mean(tmp_path: Path, files: dict, box: Atoms) -> None:
    """From Python's lammps module (Pair::extract): uncertainty_max and uncertainty_mean of the last
    computed values, over all atoms."""
    from ekd.plugin import lammps

    elements = load_exported(files["ensemble"]).elements
    write_data(tmp_path / "data.lmp", box, elements)
    lmp = lammps(cmdargs=["-screen", "none", "-log", str(tmp_path / "log.lammps")])
    try:
        lmp.commands_string("\n".join([system_lines(data=str(tmp_path / "data.lmp")),
                                        f"pair_style ekd {files['ensemble']}", f"pair_coeff * * {' '.join(elements)}",
                                        "fix u all pair 1 ekd uncertainty 1", "run 0"]))
        got = (lmp.extract_pair("uncertainty_max"), lmp.extract_pair("uncertainty_mean"))
    finally:
        lmp.close()
    want = python_deviation(files["ensemble"], box)
    assert abs(got[0] - want.max()) <= TOL * want.max()
    assert abs(got[1] - want.mean()) <= TOL * want.mean()


def test_uncertainty_is_in_the_decks_force_unit(tmp_path: Path, files: dict, box: Atoms) -> None:
    """units real: kcal/mol/A, like the forces (the thresholds of fix halt compare with them)."""
    elements = load_exported(files["ensemble"]).elements
    metal = run_uncertainty(tmp_path / "metal", box, str(files["ensemble"]), elements)
    real = run_uncertainty(tmp_path / "real", box, str(files["ensemble"]), elements, units="real")
    assert relative(real["frames"][0][:, 1], metal["frames"][0][:, 1] * EV_TO_KCAL_MOL) <= TOL


# ---- when it is computed ------------------------------------------------------------------------

MD = """velocity all create 900.0 4321 mom yes rot yes
fix nve all nve
timestep 0.0005
neigh_modify every 1 delay 0 check no
atom_modify sort 1 2.0"""


def test_committee_every_n_steps(tmp_path: Path, files: dict, box: Atoms) -> None:
    """fix pair every step, committee every 4 steps: the stored values change on multiples of 4 only
    (the last value stands in between, following its atom while atoms are sorted every step and
    move between ranks)."""
    elements = load_exported(files["student"]).elements
    got = run_uncertainty(tmp_path, box, f"{files['student']} committee {files['ensemble']} every 4", elements,
                          ranks=2, run="run 10", extra=MD)
    frames = got["frames"]
    assert sorted(frames) == list(range(11))
    changed = [s for s in range(1, 11) if not np.array_equal(frames[s][:, 1], frames[s - 1][:, 1])]
    assert changed == [4, 8]
    assert not np.array_equal(frames[1][:, 2:5], frames[0][:, 2:5]), "atoms must move"


def test_fix_halt_and_thresholded_dump_in_the_example_deck(tmp_path: Path, files: dict, box: Atoms) -> None:
    """examples/lammps/in.uncertainty with the tiny run's files: a calibration run prints the maximum
    uncertainty of every step; with a dump threshold between two of its values only the frames above
    it are written, and with a halt threshold just below a later maximum the run stops at that step."""
    elements = load_exported(files["student"]).elements
    write_data(tmp_path / "data.lmp", box, elements)
    deck = EXAMPLE_DECK.read_text().replace("pair_coeff      * * H C N O", f"pair_coeff      * * {' '.join(elements)}")
    (tmp_path / "in.uncertainty").write_text(deck)

    def run(dump_above: float, halt_above: float) -> tuple[np.ndarray, np.ndarray, dict, str]:
        variables = {"model": str(files["student"]), "committee": str(files["ensemble"]), "data": "data.lmp",
                     "every": "1", "steps": "30", "T": "900", "dump_above": str(dump_above),
                     "halt_above": str(halt_above)}
        log = run_deck(tmp_path / "in.uncertainty", variables=variables, timeout=300).check().log
        # fix halt's line sits between the last two thermo rows
        thermo = read_thermo("\n".join(line for line in log.splitlines() if not line.startswith("Fix halt")))
        return (thermo.column("Step").astype(int), thermo.column("c_umax"), read_dump(tmp_path / "uncertain.dump"),
                log)

    steps, umax, _, _ = run(1e9, 1e9)
    assert list(steps) == list(range(31))
    # halt: the last step whose maximum is above every earlier one (where the running maximum
    # last rises: with a threshold just below it, every earlier step stays below)
    stop = max(s for s in range(1, 31) if umax[s] > umax[:s].max())
    assert stop >= 2, f"the largest uncertainty must rise after the first step: {umax}"
    halt_above = 0.5 * (umax[:stop].max() + umax[stop])
    ordered = np.sort(umax[:stop + 1])  # a threshold between two printed values, never equal to one
    half = (stop + 1) // 2
    dump_above = float(0.5 * (ordered[half - 1] + ordered[half]))
    steps2, umax2, dumped, log = run(dump_above, halt_above)
    assert f"Fix halt condition for fix-id halt met on step {stop} " in log
    assert steps2[-1] == stop and np.array_equal(umax2, umax[:stop + 1])
    assert sorted(dumped) == [s for s in range(stop + 1) if umax[s] > dump_above] and 0 < len(dumped) <= stop
    assert all(len(frame) == len(box) for frame in dumped.values()), "whole frames are written"


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("other_elements", r"committee .*other.pt knows the elements H C O F but the model .*student.pt knows H C N O"),
    ("one_member", r"committee file .*teacher.pt is a hipnn model with 1 member.s. and no members.. method"),
    ("every_zero", r"'every 0': the committee runs every N steps, N must be a positive integer"),
    ("every_negative", r"'every -2': the committee runs every N steps"),
    ("every_alone", r"keyword 'every' sets how often the committee runs; it needs 'committee ENSEMBLE.pt'"),
    ("no_source", r"uncertainty was requested .* but .*teacher.pt has none: it is a single hipnn model without "
                  r"an uncertainty head"),
    ("same_position", r"atoms (1 and 2|2 and 1) are 5e-05 A apart, closer than 0.0001 A: two atoms at .nearly. the same"),
])
def test_bad_uncertainty_input_gives_a_clear_error(tmp_path: Path, files: dict, box: Atoms, case: str,
                                                   message: str) -> None:
    student, elements = files["student"], load_exported(files["student"]).elements
    style, atoms = f"{student} committee {files['ensemble']}", box.copy()
    if case == "other_elements":
        style = f"{student} committee {with_metadata(files['ensemble'], tmp_path / 'other.pt', elements=['H', 'C', 'O', 'F'])}"
    elif case == "one_member":
        style = f"{student} committee {files['teacher']}"
    elif case == "every_zero":
        style += " every 0"
    elif case == "every_negative":
        style += " every -2"
    elif case == "every_alone":
        style = f"{student} every 5"
    elif case == "no_source":
        style = str(files["teacher"])
    elif case == "same_position":
        atoms.positions[1] = atoms.positions[0] + [5e-5, 0.0, 0.0]
    write_data(tmp_path / "data.lmp", atoms, elements)
    result = run_lammps(tmp_path, uncertainty_deck(style, elements), check=False)
    assert result.returncode != 0
    error = result.error
    assert re.search(message, error), error
