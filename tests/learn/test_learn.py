"""Active learning (`python -m ekd.learn`) end to end on a small real loop: GFN2-xTB data the test
computes (water, methane, ammonia), tiny models, GFN2-xTB as the oracle (milliseconds a call).

One round grows the data; a kill during the oracle stage resumes without recomputing a result;
the grown round keeps the test split, trains on every addition, and its teachers continue from
round 0's. Bad configurations are refused with the key at fault. The coupled-cluster oracle is
checked against the embedded CCSD(T) data it must reproduce.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ekd.config import load_config
from ekd.data import AtomsData, DataSpec, read_data
from ekd.errors import ConfigError, EkdError
from ekd.learn.loop import read_sampling, run_learning
from ekd.learn.oracle import check_agreement, make_oracle
from ekd.learn.selection import select_frames

tblite = pytest.importorskip("tblite.ase", reason="the GFN2-xTB oracle needs tblite (pip install .[test])")

CONFIG = """
[data]
path = "xtb.extxyz"
[run]
threads = 1
[split]
val_fraction = 0.2
test_fraction = 0.2
[teachers]
count = 2
model = {{n_features = 12, n_sensitivities = 6, n_interactions = 1, n_atom_layers = 1, cutoff = 4.0, soft_max = 3.5}}
[teachers.train]
max_epochs = 15
batch_size = 16
[student]
model = {{n_features = 12, n_sensitivities = 6, n_interactions = 1, n_atom_layers = 1, cutoff = 4.0, soft_max = 3.5}}
[student.train]
max_epochs = 15
batch_size = 16
[learn]
rounds = 1
md_starts = 24
cluster_starts = 12
md_steps = 200
md_every = 5
box_starts = 1
box_atoms = 150
box_density = 0.6
threshold = {threshold}
threshold_max = 1000.0
max_excess_energy = 0.0
per_trajectory = 12
budget = 400
oracle = "{oracle}"
oracle_options = {options}
"""


@pytest.fixture(scope="module")
def xtb_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Displaced water, methane and ammonia with GFN2-xTB energies and forces (eV, eV/Å)."""
    from ase.build import molecule
    from ase.io import write

    folder = tmp_path_factory.mktemp("xtb_data")
    rng = np.random.default_rng(0)
    frames = []
    for name in ("H2O", "CH4", "NH3"):
        for _ in range(30):
            atoms = molecule(name)
            atoms.positions += rng.normal(0.0, 0.06, atoms.positions.shape)
            atoms.calc = tblite.TBLite(method="GFN2-xTB", verbosity=0)
            atoms.info["energy"] = atoms.get_potential_energy()
            atoms.arrays["forces"] = atoms.get_forces()
            atoms.calc = None
            frames.append(atoms)
    write(folder / "xtb.extxyz", frames)
    return folder


def write_config(folder: Path, threshold: float = 0.01, oracle: str = "gfn2-xtb", options: str = "{}") -> Path:
    path = folder / "learn.toml"
    path.write_text(CONFIG.format(threshold=threshold, oracle=oracle, options=options))
    return path


def learn(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ekd.learn", str(config), "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def kill_during_oracle(process: subprocess.Popen, oracle_dir: Path, timeout: float = 300.0) -> None:
    """Freeze the run as soon as its first oracle result is on disk, then kill it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if oracle_dir.is_dir() and any(name.endswith(".npz") for name in os.listdir(oracle_dir)):
            process.send_signal(signal.SIGSTOP)
            process.kill()
            process.wait()
            return
        time.sleep(0.001)
    output = process.communicate()[0] if process.poll() is not None else ""
    pytest.fail(f"the run never reached its oracle stage:\n{output}")


@pytest.fixture(scope="module")
def grown(xtb_data: Path) -> dict:
    """A one-round loop, killed once during its oracle calls and resumed."""
    config = write_config(xtb_data)
    out = xtb_data / "out"
    oracle_dir = out / "round_1" / "oracle"
    kill_during_oracle(learn(config, out), oracle_dir)
    before = {p.name: p.stat().st_mtime_ns for p in oracle_dir.glob("*.npz")}
    candidates = h5py.File(out / "round_1" / "candidates.h5", "r")["n_atoms"].shape[0]
    resumed = learn(config, out, "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    return {"out": out, "config": config, "before": before, "candidates": candidates, "output": output}


def test_a_kill_during_the_oracle_stage_resumes_without_recomputing(grown: dict) -> None:
    oracle_dir = grown["out"] / "round_1" / "oracle"
    before = grown["before"]
    assert 0 < len(before) < grown["candidates"], "the kill should land between the first and the last call"
    after = {p.name: p.stat().st_mtime_ns for p in oracle_dir.glob("*.npz")}
    assert len(after) == grown["candidates"]
    assert all(after[name] == stamp for name, stamp in before.items()), "a finished call was computed again"
    assert f"{len(before)} of {grown['candidates']} results kept from an earlier run" in grown["output"]
    assert not list(oracle_dir.glob("*.tmp"))


def test_one_round_grows_the_data_with_provenance(grown: dict) -> None:
    out = grown["out"]
    report = json.loads((out / "learn.json").read_text())["rounds"]
    assert [row["round"] for row in report] == [0, 1]
    added = report[1]["oracle"]["added"]
    assert added > 0 and report[1]["oracle"]["calls"] == grown["candidates"]
    assert report[1]["conformations"] == report[0]["conformations"] + added
    assert (out / "learn.md").exists() and (out / "learn.png").stat().st_size > 0
    for row in report:  # every round ran the molecules, clusters and a LAMMPS box with student and baseline
        assert {kind: row["sampling"][kind]["trajectories"] for kind in ("molecule", "cluster", "box")} == \
            {"molecule": 24, "cluster": 12, "box": 1}
        assert all(row["sampling"][kind]["baseline_survived"] is not None for kind in ("molecule", "cluster", "box"))
    assert (out / "round_1" / "boxes" / "student.pt").exists()

    with h5py.File(out / "round_1" / "additions.h5", "r") as h5:
        assert h5.attrs["oracle"] == "gfn2-xtb" and h5.attrs["level"] == "GFN2-xTB"
        assert str(h5.attrs["program"]).startswith("tblite ")
        names = [h5[g].attrs["name"] for g in h5]
        assert any(n.startswith("(") or "+" in n for n in names), f"no cluster among the additions: {names}"
        for g in h5:
            group = h5[g]
            assert set(group) >= {"round", "trajectory", "step", "temperature", "committee_deviation", "reason",
                                  "sources", "candidate", "energy", "forces"}
            assert (group["round"][()] == 1).all()
            # the oracle's own numbers: GFN2-xTB again on one addition
            calculator = tblite.TBLite(method="GFN2-xTB", verbosity=0)
            from ase import Atoms

            atoms = Atoms(numbers=group["atomic_numbers"][()], positions=group["coordinates"][0])
            atoms.calc = calculator
            assert abs(atoms.get_potential_energy() - group["energy"][0]) < 1e-6
            np.testing.assert_allclose(atoms.get_forces(), group["forces"][0], atol=1e-6)


def test_labelled_md_frames_are_held_out_as_a_test_set(grown: dict) -> None:
    """[learn] md_test_fraction (0.1) of the labelled frames with forces never train; every
    round from 1 on reports its models' errors on them."""
    out = grown["out"]
    report = json.loads((out / "learn.json").read_text())["rounds"]
    oracle = report[1]["oracle"]
    assert oracle["held_out"] == round(0.1 * (oracle["added"] + oracle["held_out"])) > 0
    with h5py.File(out / "round_1" / "md_test.h5", "r") as held, h5py.File(out / "round_1" / "additions.h5", "r") as added:
        held_ids = set(np.concatenate([held[g]["candidate"][()] for g in held]).tolist())
        added_ids = set(np.concatenate([added[g]["candidate"][()] for g in added]).tolist())
        assert len(held_ids) == oracle["held_out"] and not held_ids & added_ids
        assert all(np.isfinite(held[g]["forces"][()]).all() for g in held)
    assert report[0]["md_test"] == {}
    tested = report[1]["md_test"]
    assert tested["frames"] == oracle["held_out"]
    for model in ("student", "baseline", "ensemble"):
        assert 0 < tested[model]["force_rmse"] < 50 and np.isfinite(tested[model]["energy_rmse"])
    assert f"| {oracle['held_out']} | " in (out / "learn.md").read_text()


def test_the_grown_round_keeps_the_test_split_and_trains_on_every_addition(grown: dict) -> None:
    out = grown["out"]
    first = json.loads((out / "round_0" / "split.json").read_text())
    second = json.loads((out / "round_1" / "split.json").read_text())
    n_first = len(read_data(load_config(grown["config"]).data))
    added = json.loads((out / "learn.json").read_text())["rounds"][1]["oracle"]["added"]
    assert second["test"] == first["test"] and second["val"] == first["val"]
    assert second["train"] == first["train"] + list(range(n_first, n_first + added))
    assert (out / "round_1" / "references.json").read_text() == (out / "round_0" / "references.json").read_text()


def test_round_teachers_continue_from_the_previous_round(grown: dict) -> None:
    import tomllib

    import torch

    from ekd.models import build_model, load_model
    from ekd.train.method import start_from

    out = grown["out"]
    saved = tomllib.loads((out / "round_1" / "config.toml").read_text())
    assert Path(saved["teachers"]["init_from"]) == out / "round_0"
    assert saved["data"]["additions"] == [str(out / "round_1" / "additions.h5")]

    checkpoint = out / "round_0" / "teachers" / "teacher_0" / "checkpoint.pt"
    previous = load_model(checkpoint)
    config = load_config(grown["config"])
    fresh = build_model("hipnn", list(previous.elements), config.teachers.model).to(torch.float32)
    start_from(fresh, checkpoint, "teacher_0")
    for key, value in previous.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    other = build_model("hipnn", list(previous.elements), {**config.teachers.model, "n_features": 8})
    with pytest.raises(EkdError, match="other hyperparameters"):
        start_from(other, checkpoint, "teacher_0")


def test_resume_refuses_another_configuration_and_a_second_run_needs_resume(grown: dict, tmp_path: Path) -> None:
    other = write_config(tmp_path, threshold=0.02)
    (tmp_path / "xtb.extxyz").symlink_to(grown["config"].parent / "xtb.extxyz")
    with pytest.raises(ConfigError, match="another configuration"):
        run_learning(load_config(other), grown["out"], resume=True, progress=False, say=lambda line: None)
    with pytest.raises(EkdError, match="pass --resume"):
        run_learning(load_config(grown["config"]), grown["out"], resume=False, progress=False, say=lambda line: None)


def test_selection_keeps_to_the_deviation_window(grown: dict) -> None:
    frames, trajectories, deviation, reference = read_sampling(grown["out"] / "round_1" / "sampling.h5")
    assert np.isfinite(reference).all() and (reference < 0).all()   # sums of the molecules' lowest energies
    settings = load_config(grown["config"]).learn
    settings.threshold, settings.threshold_max = np.percentile(deviation, [20, 60])
    selection = select_frames(trajectories, deviation, settings)
    assert (deviation[selection.frames] <= settings.threshold_max).all()
    disagreement = selection.frames[selection.reason == 1]
    assert (deviation[disagreement] > settings.threshold).all()
    for row in selection.frames[selection.reason == 0]:  # the last frame within the window before the failure
        t = trajectories.trajectory[row]
        later = np.flatnonzero((trajectories.trajectory == t) & (trajectories.step > trajectories.step[row]))
        assert trajectories.failed_step[t] >= 0 and (deviation[later] > settings.threshold_max).all()


def test_picks_in_a_trajectory_are_five_of_its_own_frames_apart() -> None:
    """Molecules keep a frame every md_every steps, boxes every box_every: the gap between two
    picks of one trajectory counts that trajectory's own frames."""
    from ekd.config import LearnSettings
    from ekd.learn.sampling import BOX, MOLECULE, Trajectories

    steps = [np.arange(10, 410, 10), np.arange(4, 164, 4)]       # 40 frames each; neither failed
    n = sum(len(s) for s in steps)
    frames = AtomsData(species=np.ones(n, dtype=np.int64), positions=np.zeros((n, 3)), n_atoms=np.ones(n, dtype=np.int64),
                       energy=np.zeros(n))
    trajectories = Trajectories(frames, np.repeat([0, 1], 40), np.concatenate(steps), np.full(n, 300.0),
                                np.array([-1, -1]), ["", ""], np.array([300.0, 300.0]), np.array([MOLECULE, BOX]),
                                np.full((2, 1), -1))
    deviation = np.tile(np.linspace(2.0, 1.5, 40), 2)      # every frame in the window, the earliest the largest
    settings = LearnSettings(md_every=10, box_every=4, per_trajectory=3, threshold=1.0, threshold_max=3.0)
    picked = select_frames(trajectories, deviation, settings).frames
    assert list(trajectories.step[picked[picked < 40]]) == [10, 60, 110]
    assert list(trajectories.step[picked[picked >= 40]]) == [4, 24, 44]
    settings.box_every = 0                                  # 0: boxes use md_every too
    picked = select_frames(trajectories, deviation, settings).frames
    assert list(trajectories.step[picked[picked >= 40]]) == [4, 56, 108]


def test_carved_clusters_have_their_own_upper_bound() -> None:
    """Clusters carved from boxes, whole molecules at close contact, lie far above the molecules'
    window (liquid water's trimers: 6 eV/Å median in vacuum); `carve_threshold_max` admits them
    without admitting molecular frames as far gone."""
    from ekd.config import LearnSettings
    from ekd.learn.sampling import BOX, MOLECULE, Trajectories

    n = 20
    frames = AtomsData(species=np.ones(2 * n, dtype=np.int64), positions=np.zeros((2 * n, 3)),
                       n_atoms=np.ones(2 * n, dtype=np.int64), energy=np.zeros(2 * n))
    trajectories = Trajectories(frames, np.repeat([0, 1], n), np.tile(np.arange(10, 10 * n + 1, 10), 2),
                                np.full(2 * n, 300.0), np.array([-1, -1]), ["", ""], np.array([300.0, 300.0]),
                                np.array([MOLECULE, BOX]), np.full((2, 1), -1))
    deviation = np.tile(np.linspace(4.0, 6.0, n), 2)
    settings = LearnSettings(md_every=10, per_trajectory=3, threshold=1.2, threshold_max=3.0)
    with pytest.raises(EkdError, match="carve_threshold_max = 3"):
        select_frames(trajectories, deviation, settings)
    settings.carve_threshold_max = 8.0
    selection = select_frames(trajectories, deviation, settings)
    assert len(selection.frames) == 3 and (selection.frames >= n).all()     # the box's frames only
    assert selection.over_threshold == n
    with pytest.raises(ConfigError, match="carve_threshold_max"):
        LearnSettings(threshold=1.2, carve_threshold_max=1.0).check()

def test_a_threshold_that_selects_nothing_says_so(grown: dict) -> None:
    frames, trajectories, deviation, _ = read_sampling(grown["out"] / "round_1" / "sampling.h5")
    settings = load_config(grown["config"]).learn
    settings.threshold_max = float(deviation.max()) + 2.0
    settings.threshold = float(deviation.max()) + 1.0
    trajectories.failed_step[:] = -1   # as if every trajectory survived: only the threshold could select
    with pytest.raises(EkdError, match="threshold"):
        select_frames(trajectories, deviation, settings)


def test_an_oracle_of_another_level_of_theory_is_refused(grown: dict) -> None:
    data = read_data(load_config(grown["config"]).data)
    offsets = data.offsets
    oracle = make_oracle("gfn2-xtb", {"method": "GFN1-xTB"})
    with pytest.raises(ConfigError, match="another\\s+level of theory"):
        check_agreement(oracle, "gfn2-xtb", [data.species[offsets[0]:offsets[1]]],
                        [data.positions[offsets[0]:offsets[1]]], data.energy[:1], ["0 (H2O)"], 1e-3)


@pytest.mark.parametrize("oracle, options, message", [
    ("dft", "{}", "is not known"),
    ("ase:no_such_package.Calculator", "{}", "not installed"),
    ("ase:ase.calculators.emt.NoSuchClass", "{}", "has no NoSuchClass"),
    ("ccsd(t)", "{basis = 'cc-pVDZ', level = 2}", "unknown key"),
])
def test_bad_oracles_are_refused_before_any_work(xtb_data: Path, tmp_path: Path, oracle: str, options: str,
                                                 message: str) -> None:
    (tmp_path / "xtb.extxyz").symlink_to(xtb_data / "xtb.extxyz")
    if oracle == "ccsd(t)":
        pytest.importorskip("pyscf")
    with pytest.raises(ConfigError, match=message):
        run_learning(load_config(write_config(tmp_path, oracle=oracle, options=options)), tmp_path / "out",
                     progress=False, say=lambda line: None)
    assert not (tmp_path / "out" / "round_0").exists(), "nothing is trained before the oracle is known"


def test_cluster_molecules_must_name_groups_of_the_data(grown: dict) -> None:
    from ekd.learn.sampling import cluster_pool

    data = read_data(load_config(grown["config"]).data)
    with pytest.raises(ConfigError, match="cluster_molecules: no group 'CH3OH'"):
        cluster_pool(data, np.arange(len(data)), ["CH3OH"])


def test_the_coupled_cluster_oracle_reproduces_the_embedded_data(embedded_data: Path) -> None:
    pytest.importorskip("pyscf", reason="the CCSD(T) oracle needs PySCF (pip install .[test])")
    data = read_data(DataSpec(path=str(embedded_data), energy_key="ccsd(t)_dz.energy",
                              forces_key="ccsd(t)_dz.forces", energy_unit="Hartree"))
    water = np.flatnonzero(data.n_atoms == 3)[:2]
    offsets = data.offsets
    differences = check_agreement(make_oracle("ccsd(t)", {}), "ccsd(t)",
                                  [data.species[offsets[c]:offsets[c + 1]] for c in water],
                                  [data.positions[offsets[c]:offsets[c + 1]] for c in water], data.energy[water],
                                  [str(c) for c in water], tolerance=1e-5)
    assert max(abs(d) for d in differences) < 1e-5  # eV: the same method, the same units


def test_the_coupled_cluster_oracle_forces_are_minus_the_energy_gradient() -> None:
    pytest.importorskip("pyscf", reason="the CCSD(T) oracle needs PySCF (pip install .[test])")
    species = np.array([8, 1, 1])
    positions = np.array([[0.0, 0.0, 0.12], [0.0, 0.78, -0.47], [0.05, -0.74, -0.50]])  # a distorted water
    oracle = make_oracle("ccsd(t)", {"forces": True})
    _, forces = oracle.compute(species, positions)
    step = 1e-3  # Å; central differences, error O(step²) ~ 1e-6 eV/Å
    for atom, axis in ((0, 2), (1, 1), (2, 0)):
        shifted = [positions.copy(), positions.copy()]
        shifted[0][atom, axis] += step
        shifted[1][atom, axis] -= step
        plus, minus = (make_oracle("ccsd(t)", {}).compute(species, x)[0] for x in shifted)
        assert abs(forces[atom, axis] + (plus - minus) / (2 * step)) < 1e-4  # eV/Å


def test_carved_clusters_hold_whole_molecules_at_their_nearest_images() -> None:
    from ase.build import molecule

    from ekd.learn.boxes import carve, molecules_of
    from ekd.stability.box import BoxSettings, build_box
    from ekd.stability.trajectories import Molecule

    molecules = [Molecule(name, molecule(name).numbers, molecule(name).positions) for name in ("H2O", "CH4")]
    box = build_box(molecules, BoxSettings(atoms=300, density=0.6), cutoff=4.0)
    lengths = np.asarray(box.cell.lengths())
    owner = molecules_of(box)
    assert owner.max() + 1 == len(box) // 8 * 2   # every molecule of the box found, none fused
    # unwrapped coordinates: whole molecules moved by arbitrary lattice vectors, as LAMMPS's xu after crossings
    rng = np.random.default_rng(1)
    unwrapped = box.positions + (rng.integers(-2, 3, size=(owner.max() + 1, 3)) * lengths)[owner]
    radius, most = 3.5, 4
    atoms, positions = carve(unwrapped, lengths, owner, 0, radius, most)
    chosen = np.unique(owner[atoms])
    assert owner[0] in chosen and len(chosen) <= most
    for m in chosen:                      # whole molecules
        assert set(np.flatnonzero(owner == m)) <= set(atoms)

    def minimum_image(i: int, j: int) -> float:
        d = box.positions[j] - box.positions[i]
        return float(np.linalg.norm(d - lengths * np.round(d / lengths)))

    home = np.flatnonzero(owner == owner[0])
    for a in np.flatnonzero(np.isin(atoms, home)):  # distances from the central molecule: the box's minimum images
        for b in range(len(atoms)):
            assert abs(np.linalg.norm(positions[b] - positions[a]) - minimum_image(atoms[a], atoms[b])) < 1e-9
    for m in chosen:                      # and every molecule as it is in the box
        rows = np.flatnonzero(owner[atoms] == m)
        inside = positions[rows][:, None] - positions[rows][None]
        original = box.positions[atoms[rows]][:, None] - box.positions[atoms[rows]][None]
        np.testing.assert_allclose(np.linalg.norm(inside, axis=-1), np.linalg.norm(original, axis=-1), atol=1e-9)
    for m in chosen:                      # each chosen molecule has an atom within the radius of the central one
        others = np.flatnonzero(owner == m)
        assert min(minimum_image(i, j) for i in home for j in others) < radius


def test_every_start_keeps_its_sources_at_every_temperature(grown: dict) -> None:
    import torch

    from ekd.distill.augment import Teachers
    from ekd.learn.sampling import run_dynamics, starting_structures
    from ekd.models import load_model
    from ekd.stability.criterion import FailureCriterion

    config = load_config(grown["config"])
    settings = config.learn
    settings.temperatures, settings.md_steps, settings.md_every = [300.0, 500.0], 10, 5
    data = read_data(config.data)
    starts = starting_structures(data, np.arange(len(data)), settings, np.random.default_rng(0))
    model = load_model(grown["out"] / "round_0" / "student" / "checkpoint.pt")
    teachers = Teachers([model], list(model.elements), torch.float32, "cpu")
    trajectories = run_dynamics(model, teachers, starts, settings, 0, FailureCriterion(), False, "student")
    np.testing.assert_array_equal(trajectories.start_sources, np.concatenate([starts.sources, starts.sources]))
    np.testing.assert_array_equal(trajectories.start_temperature, np.repeat([300.0, 500.0], len(starts.data)))


def test_labelling_refuses_when_nothing_can_be_added(grown: dict, tmp_path: Path) -> None:
    from ekd.learn.loop import Learning, label_candidates

    config = load_config(grown["config"])
    data = read_data(config.data)
    candidates = data.subset(np.arange(3))
    provenance = {"reference_energy": data.energy[:3] - 100.0}   # 100 eV under each: far too high
    learning = Learning(config, tmp_path, progress=False, say=lambda line: None)
    oracle = make_oracle("gfn2-xtb", {})
    config.learn.max_excess_energy = 0.3
    with pytest.raises(EkdError, match="no labelled conformation is within max_excess_energy = 0.3"):
        label_candidates(learning, 1, oracle, candidates, provenance, tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists()

    candidates.positions[:] = 0.0                                  # every atom on one spot: every call fails
    with pytest.raises(EkdError, match="every one of 3 oracle calls failed"):
        label_candidates(learning, 2, oracle, candidates, provenance, tmp_path / "b.h5")
    assert not (tmp_path / "b.h5").exists()


def test_a_carved_cluster_is_judged_by_its_own_deviation_in_vacuum(grown: dict, tmp_path: Path) -> None:
    """The deviation that selects a cluster carved from a box is the teachers' on the cluster as
    the oracle sees it (in vacuum), not its central atom's in the box (boxes.py)."""
    import torch
    from ase import Atoms

    from ekd.calculator import EKDCalculator
    from ekd.export import export_model
    from ekd.learn.sampling import BOX

    round_dir = grown["out"] / "round_1"
    frames, trajectories, deviation, _ = read_sampling(round_dir / "sampling.h5")
    rows = np.flatnonzero(trajectories.start_kind[trajectories.trajectory] == BOX)
    assert len(rows), "the box gave no clusters"
    teachers = sorted((round_dir / "teachers").glob("teacher_*/checkpoint.pt"))
    export_model(teachers, tmp_path / "ensemble.pt", torch.float64)
    calculator = EKDCalculator(str(tmp_path / "ensemble.pt"), uncertainty=True)
    for row in rows[:: max(1, len(rows) // 5)]:
        cluster = frames.subset(np.array([row]))
        atoms = Atoms(numbers=cluster.species, positions=cluster.positions)    # no cell: vacuum
        atoms.calc = calculator
        atoms.get_forces()
        # the teachers run in float32 in the loop: 1e-4 relative
        assert deviation[row] == pytest.approx(calculator.results["atom_uncertainty"].max(), rel=1e-4, abs=1e-5)


def test_boxes_keep_a_frame_every_box_every_steps(grown: dict, tmp_path: Path) -> None:
    """... of the MD after the box's relaxation (box_relax_steps), which lowers its energy."""
    import re

    import torch

    from ekd.distill.augment import Teachers
    from ekd.learn.boxes import run_boxes
    from ekd.models import load_model
    from ekd.stability.criterion import FailureCriterion

    config = load_config(grown["config"])
    config.learn.box_every, config.learn.md_steps, config.learn.temperatures = 2, 20, [300.0]
    config.learn.box_relax_steps = 15
    student = grown["out"] / "round_1" / "boxes" / "student.pt"
    model = load_model(grown["out"] / "round_1" / "student" / "checkpoint.pt")
    teachers = Teachers([model], list(model.elements), torch.float32, "cpu")
    boxes, deviation, _ = run_boxes(student, teachers, read_data(config.data), config.learn, 0, FailureCriterion(),
                                    tmp_path, "student", True, {})
    steps = boxes.step.tolist()
    last = boxes.failed_step[0] if boxes.failed_step[0] >= 0 else config.learn.md_steps + 1
    assert steps == [s for s in range(2, 21, 2) if s < last] and len(deviation) == len(steps)
    deck = (tmp_path / "student_300K_0" / "in.deck").read_text()
    assert "dump frames all custom 2 " in deck and "minimize 0.0 0.01 15 150" in deck
    initial, final = re.search(r"Energy initial, next-to-last, final =\s+(\S+)\s+\S+\s+(\S+)",
                               (tmp_path / "student_300K_0" / "log.lammps").read_text()).groups()
    assert float(final) < float(initial)


def test_a_box_that_cannot_be_built_names_the_keys(grown: dict, tmp_path: Path) -> None:
    import torch

    from ekd.distill.augment import Teachers
    from ekd.learn.boxes import run_boxes
    from ekd.models import load_model
    from ekd.stability.criterion import FailureCriterion

    config = load_config(grown["config"])
    config.learn.box_density = 5.0
    model = load_model(grown["out"] / "round_0" / "student" / "checkpoint.pt")
    teachers = Teachers([model], list(model.elements), torch.float32, "cpu")
    with pytest.raises(ConfigError, match="box_atoms = 150, box_density = 5: at 5 g/cm³ the molecules overlap"):
        run_boxes(tmp_path / "student.pt", teachers, read_data(config.data), config.learn, 0, FailureCriterion(),
                  tmp_path, "student", True, {})


def test_teachers_start_only_from_a_finished_teacher_of_the_same_kind(grown: dict, tmp_path: Path) -> None:
    import torch

    from ekd.models import build_model, load_model
    from ekd.training import read_checkpoint
    from ekd.train.method import start_from

    checkpoint = grown["out"] / "round_0" / "teachers" / "teacher_0" / "checkpoint.pt"
    elements = list(load_model(checkpoint).elements)
    with pytest.raises(EkdError, match="is a hipnn model of elements"):
        start_from(build_model("equivariant", elements, {}), checkpoint, "teacher_0")
    state = read_checkpoint(checkpoint)
    state["finished"] = False
    torch.save(state, tmp_path / "unfinished.pt")
    with pytest.raises(EkdError, match="is not a finished checkpoint of teacher_0"):
        start_from(build_model("hipnn", elements, {}), tmp_path / "unfinished.pt", "teacher_0")


def test_additions_are_refused_when_the_data_are_read_in_shards(embedded_data: Path, tmp_path: Path) -> None:
    from ekd.run_directory import open_run
    from tests.conftest import write_tiny_config

    config = load_config(write_tiny_config(tmp_path))
    config.data.additions = [str(tmp_path / "additions.h5")]
    with pytest.raises(ConfigError, match="additions cannot be read in shards"):
        open_run(tmp_path / "run", config, progress=False, shard=(0, 2))


def test_added_weight_is_refused_when_the_data_are_read_in_shards(tmp_path: Path) -> None:
    from ekd.run_directory import open_run
    from tests.conftest import write_tiny_config

    config = load_config(write_tiny_config(tmp_path))
    config.data.added_weight = 0.5
    with pytest.raises(ConfigError, match="added_weight is not applied to data read in shards"):
        open_run(tmp_path / "run", config, progress=False, shard=(0, 2))


def test_a_run_weighs_the_conformations_active_learning_added(embedded_data: Path, tmp_path: Path) -> None:
    """Version 2 of the embedded data with `added_weight`: every model's graph carries the loss
    weight of each conformation (the 50 additions at 0.25, the rest at 1), and the log says so."""
    import dataclasses

    from ekd.run_directory import open_run
    from tests.conftest import write_tiny_config

    config = load_config(write_tiny_config(tmp_path))
    data = DataSpec(path=str(embedded_data.with_name("chno_ccsdt_v2.h5")), energy_key="ccsd(t)_dz.energy",
                    forces_key="ccsd(t)_dz.forces", energy_unit="Hartree", added_weight=0.25)
    run = open_run(tmp_path / "run", dataclasses.replace(config, data=data), progress=False)
    weight = run.graph(4.0).conformation_targets["weight"].numpy()
    np.testing.assert_array_equal(weight, np.where(run.data.round > 0, 0.25, 1.0))
    assert (weight == 0.25).sum() == 50
    assert any("50 conformations added by active learning (round 1); they weigh 0.25" in line for line in run.log)
    unweighted = open_run(tmp_path / "run1", dataclasses.replace(config, data=dataclasses.replace(data, added_weight=1.0)),
                          progress=False)
    assert "weight" not in unweighted.graph(4.0).conformation_targets
