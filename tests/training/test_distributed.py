"""Training on several processes (torchrun, CPU gloo): 2 processes reproduce 1 process, resume
under DDP after a failure and after a kill -9, labels made in blocks equal one-process labels,
the failure of one rank stops every rank with a message naming it, and sharded HDF5 reading
gives exactly what whole-file reading gives.

Run as a script (`torchrun ... tests/training/test_distributed.py --fail WHERE:RANK:AT -- ARGS`)
this file is an `ekd.train` worker with a failure injected, used by the failure tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import h5py
import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve()


# ---- launching ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: List[str], cwd: Path, nproc: int = 2, fail: Optional[str] = None) -> subprocess.Popen:
    """`python -m torch.distributed.run` of ekd.train (or of this file with a failure injected)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    target = [str(HERE), "--fail", fail, "--"] if fail else ["-m", "ekd.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(launcher + target + args + ["--quiet"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out = process.communicate(timeout=timeout)[0]
    return out


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher.pid:
                continue
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = int(entry.name)
    return found


# ---- comparing ------------------------------------------------------------------------------------

def assert_same_model(a: Path, b: Path, rtol: float) -> None:
    from ekd.training import read_checkpoint

    x, y = read_checkpoint(a), read_checkpoint(b)
    assert x["epoch"] == y["epoch"] and x["best_epoch"] == y["best_epoch"], (a, b)
    for key in ("model_state", "best_state"):
        for name, tensor in x[key].items():
            assert torch.allclose(tensor, y[key][name], rtol=rtol, atol=rtol * 1e-3), f"{a} {key} {name}"
    for row_x, row_y in zip(x["history"], y["history"]):
        assert row_x["val"]["loss"] == pytest.approx(row_y["val"]["loss"], rel=rtol)
        assert row_x["train"]["loss"] == pytest.approx(row_y["train"]["loss"], rel=rtol)


def assert_same_labels(a: Path, b: Path, rtol: float = 1e-10) -> None:
    with h5py.File(a) as x, h5py.File(b) as y:
        assert x.attrs["complete"] and y.attrs["complete"]
        assert x.attrs["data_fingerprint"] == y.attrs["data_fingerprint"]
        assert x.attrs["data_source"] == y.attrs["data_source"]
        for name in x:
            assert np.allclose(x[name][()], y[name][()], rtol=rtol, atol=1e-12), name


def copy_teachers(run: Path, out: Path) -> None:
    """A run directory with `run`'s config, split, references and teachers, but no labels."""
    out.mkdir(parents=True)
    for name in ("config.toml", "split.json", "references.json"):
        shutil.copy2(run / name, out / name)
    shutil.copytree(run / "teachers", out / "teachers")


# ---- 2 processes = 1 process ------------------------------------------------------------------------

def test_data_parallel_run_equals_one_process(tiny_run: Path, tmp_path: Path) -> None:
    """The whole method on 2 ranks (DDP, the HDF5 file read in shards, labels in 2 blocks)
    ends with the weights and labels of the 1-process run (float64)."""
    config = tiny_run.parent / "tiny.toml"
    process = torchrun([str(config), "--out", "two"], tmp_path)
    out = finish(process)
    assert process.returncode == 0, out
    assert "(read in shards)" in out and "on 2 ranks" in out and "labels: wrote" in out
    assert out.count("# Run summary") == 1, "only rank 0 writes the summary"
    for name in ("teachers/teacher_0", "teachers/teacher_1", "student", "baseline"):
        assert_same_model(tiny_run / name / "checkpoint.pt", tmp_path / "two" / name / "checkpoint.pt", rtol=1e-9)
    assert_same_labels(tiny_run / "labels.h5", tmp_path / "two/labels.h5", rtol=1e-8)
    assert not list((tmp_path / "two").glob("labels.h5.*")), "block files are removed after the merge"
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["data"]["train_conformations"] == 120


def test_teachers_spread_over_ranks_equal_one_process(tiny_run: Path, tmp_path: Path) -> None:
    """parallel = "teachers": teacher k trains alone on rank k mod 2 (the student on rank 0, the
    baseline on rank 1), each exactly as in one process."""
    text = (tiny_run.parent / "tiny.toml").read_text().replace("[run]\n", "[run]\nparallel = \"teachers\"\n")
    config = tmp_path / "teachers.toml"
    config.write_text(text)
    process = torchrun([str(config), "--out", "spread"], tmp_path)
    out = finish(process)
    assert process.returncode == 0, out
    assert "[rank 1] teacher_1: hipnn" in out and "[rank 1] baseline: hipnn" in out
    for name in ("teachers/teacher_0", "teachers/teacher_1"):
        assert_same_model(tiny_run / name / "checkpoint.pt", tmp_path / "spread" / name / "checkpoint.pt", rtol=0.0)
    for name in ("student", "baseline"):
        assert_same_model(tiny_run / name / "checkpoint.pt", tmp_path / "spread" / name / "checkpoint.pt",
                          rtol=1e-9)
    assert_same_labels(tiny_run / "labels.h5", tmp_path / "spread/labels.h5")


# ---- failures and resumption ------------------------------------------------------------------------

def _one_teacher_config(folder: Path, epochs: int = 5) -> Path:
    from tests.conftest import write_tiny_config

    path = write_tiny_config(folder, epochs=epochs)
    path.write_text(path.read_text().replace("count = 2", "count = 1"))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (one teacher, 5 epochs), in this process: 2 ranks reproduce it."""
    from ekd.config import load_config
    from ekd.train import run_stages

    folder = tmp_path_factory.mktemp("uninterrupted")
    run_stages(load_config(_one_teacher_config(folder)), folder / "run", "teachers", resume=False, progress=False)
    return folder / "run"


def test_failure_of_one_rank_stops_every_rank_and_resume_continues(uninterrupted: Path, tmp_path: Path) -> None:
    config = _one_teacher_config(tmp_path)
    args = [str(config), "--out", "run", "--stage", "teachers"]
    failed = torchrun(args, tmp_path, fail="train:1:2")  # rank 1 raises in epoch 3 (0-based 2)
    out = finish(failed)
    assert failed.returncode != 0, out
    assert "error: rank 1 failed: RuntimeError: injected failure" in out
    assert "because rank 1 failed" in out, "rank 0 says why it stopped"
    from ekd.training import read_checkpoint

    state = read_checkpoint(tmp_path / "run/teachers/teacher_0/checkpoint.pt")
    assert state["epoch"] == 2 and not state["finished"], "the last complete checkpoint is kept"

    resumed = torchrun(args + ["--resume"], tmp_path)
    out = finish(resumed)
    assert resumed.returncode == 0, out
    assert "resuming from epoch 2" in out
    name = "teachers/teacher_0/checkpoint.pt"
    assert_same_model(uninterrupted / name, tmp_path / "run" / name, rtol=1e-9)


def test_kill_of_a_rank_and_resume_under_ddp(uninterrupted: Path, tmp_path: Path) -> None:
    from ekd.training import read_checkpoint

    config = _one_teacher_config(tmp_path)
    args = [str(config), "--out", "run", "--stage", "teachers"]
    launcher = torchrun(args, tmp_path)
    checkpoint = tmp_path / "run/teachers/teacher_0/checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and launcher.poll() is None:
        try:
            if checkpoint.exists() and 1 <= read_checkpoint(checkpoint)["epoch"] < 4:
                break
        except Exception:  # being replaced right now
            pass
        time.sleep(0.05)
    workers = worker_pids(launcher)
    assert 1 in workers, "rank 1 must still run"
    os.kill(workers[1], signal.SIGKILL)
    out = finish(launcher)
    assert launcher.returncode != 0, out
    interrupted_at = read_checkpoint(checkpoint)["epoch"]
    assert 1 <= interrupted_at < 5 and not read_checkpoint(checkpoint)["finished"]

    resumed = torchrun(args + ["--resume"], tmp_path)
    out = finish(resumed)
    assert resumed.returncode == 0, out
    assert f"resuming from epoch {interrupted_at}" in out
    name = "teachers/teacher_0/checkpoint.pt"
    assert_same_model(uninterrupted / name, tmp_path / "run" / name, rtol=1e-9)


def test_labels_in_blocks_survive_a_failure_and_equal_one_process(tiny_run: Path, tmp_path: Path) -> None:
    copy_teachers(tiny_run, tmp_path / "run")
    args = [str(tiny_run.parent / "tiny.toml"), "--out", "run", "--stage", "label"]
    failed = torchrun(args, tmp_path, fail="label:1:1")  # rank 1 fails after its first labels batch
    out = finish(failed)
    assert failed.returncode != 0 and "error: rank 1 failed: RuntimeError: injected failure" in out, out
    assert not (tmp_path / "run/labels.h5").exists()
    blocks = sorted((p for p in (tmp_path / "run").glob("labels.h5.part-*")),
                    key=lambda p: int(p.name.split("-")[1]))
    # rank 1's block is partial; rank 0's is complete, partial or not yet begun, depending on how far
    # it got before rank 1 failed (on a loaded machine it may not have written a row)
    assert len(blocks) in (1, 2) and int(blocks[-1].name.split("-")[1]) > 0, blocks
    assert blocks[-1].name.endswith(".partial"), blocks
    with h5py.File(blocks[-1]) as h5:
        assert 0 < h5.attrs["done"] < h5["energy_mean"].shape[0], "the partial block keeps its labelled rows"

    resumed = torchrun(args + ["--resume"], tmp_path)
    out = finish(resumed)
    assert resumed.returncode == 0, out
    assert_same_labels(tiny_run / "labels.h5", tmp_path / "run/labels.h5")
    assert not list((tmp_path / "run").glob("labels.h5.*"))


# ---- in one process: the loss from reduced sums, sharded reading --------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_surrogate_gradient_is_the_gradient_of_the_global_batch_loss(dtype: torch.dtype, weighted: bool) -> None:
    """The sums of 3 uneven parts (one empty) give the loss and gradient of the whole batch,
    also with conformation loss weights (`[data] added_weight`)."""
    from ekd.data import AtomsData, GraphData
    from ekd.models import build_model, predict
    from ekd.training import TrainConfig
    from ekd.training.distributed import loss_statistics, surrogate_loss, terms_from_statistics
    from ekd.training.losses import loss_terms, total_loss
    from tests.conftest import random_molecule

    molecules = [random_molecule(n, seed) for seed, n in enumerate([3, 5, 4, 6, 2, 5, 4])]
    rng = np.random.default_rng(0)
    data = AtomsData(species=np.concatenate([z for z, _ in molecules]),
                     positions=np.concatenate([x for _, x in molecules]),
                     n_atoms=[len(z) for z, _ in molecules], energy=rng.normal(size=len(molecules)))
    forces = rng.normal(size=(data.n_total_atoms, 3))
    forces[:4] = np.nan  # unlabelled atoms
    weights = {"weight": rng.uniform(0.2, 3.0, size=len(data))} if weighted else {}
    graph = GraphData(data, [1, 6, 7, 8], 4.0, dtype, atom_labels={"forces": forces}, conformation_labels=weights)
    config = TrainConfig(forces_weight=0.7, hierarchicality=0.1)
    torch.manual_seed(0)
    model = build_model("hipnn", [1, 6, 7, 8], {"n_features": 8, "n_sensitivities": 4, "n_interactions": 2,
                                                 "n_atom_layers": 1, "cutoff": 4.0, "soft_max": 3.5}).to(dtype)

    def zeroth(batch):  # any energy per conformation will do for the check
        return batch.ids.to(dtype) + 1.0

    everything = graph.batch(np.arange(len(data)))
    prediction = predict(model, everything, forces=True, create_graph=True)
    terms = loss_terms(prediction, everything, config, zeroth(everything))
    loss = total_loss(terms, config)
    expected = torch.autograd.grad(loss, list(model.parameters()))

    parts = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([3, 4, 5, 6])]
    local = []
    for ids in parts:
        batch = graph.batch(ids)
        local.append(loss_statistics(predict(model, batch, forces=True, create_graph=True), batch, config,
                                     zeroth(batch)))
    total = sum(s.detach().double() for s in local)
    reduced = terms_from_statistics(total)
    assert set(reduced) == set(terms)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for name, value in terms.items():
        assert reduced[name] == pytest.approx(float(value.detach()), rel=tolerance)
    gradient = [torch.zeros_like(p) for p in model.parameters()]
    for stats in local:
        for g, part in zip(gradient, torch.autograd.grad(surrogate_loss(stats, total, config),
                                                         list(model.parameters()), allow_unused=True)):
            if part is not None:
                g += part
    for g, e in zip(gradient, expected):
        assert torch.allclose(g, e, rtol=tolerance * 10, atol=tolerance * 1e-2)


def _shared_or_skip(name: str) -> Path:
    from tests.conftest import shared_file

    return shared_file(name)


@pytest.mark.parametrize("which", ["embedded", "ani1", "ani1x"])
def test_sharded_reading_equals_whole_file_reading(which: str) -> None:
    from ekd.config import EMBEDDED_DATA
    from ekd.data import DataSpec, SplitSpec, fit_reference_energies, make_split, read_data
    from ekd.data.sharded import HDF5Source, balanced_ranges
    from ekd.distill.labels import data_fingerprint

    spec = {"embedded": lambda: DataSpec(str(EMBEDDED_DATA), energy_key="ccsd(t)_dz.energy",
                                         forces_key="ccsd(t)_dz.forces"),
            "ani1": lambda: DataSpec(str(_shared_or_skip("ani1_gdb_s01.h5"))),
            "ani1x": lambda: DataSpec(str(_shared_or_skip("ani1x_release_sample.h5")),
                                      energy_key="ccsd(t)_cbs.energy", forces_key="wb97x_dz.forces")}[which]()
    whole = read_data(spec)
    source = HDF5Source(spec)  # ani1x: NaN energies are skipped exactly as read_data skips them
    assert len(source) == len(whole) and source.group_names == whole.group_names
    assert np.array_equal(source.energy, whole.energy) and np.array_equal(source.has_forces, whole.has_forces)
    for start, stop in balanced_ranges(source.n_atoms, 3):
        part, expected = source.read(start, stop), whole.subset(np.arange(start, stop))
        for key in ("species", "positions", "n_atoms", "energy", "group"):
            assert np.array_equal(getattr(part, key), getattr(expected, key)), key
        if whole.forces is not None:
            assert np.array_equal(part.forces, expected.forces, equal_nan=True)
    assert source.fingerprint() == data_fingerprint(whole)
    if len(whole) > 100:
        split = make_split(whole, SplitSpec())
        assert all(np.array_equal(split[k], v) for k, v in make_split(source, SplitSpec()).items())
        # both fits warn alike when the set has fewer compositions than elements (ANI-1 samples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fitted = fit_reference_energies(whole.subset(split["train"]), whole.elements)
            assert np.array_equal(source.fit_reference_energies(split["train"], source.elements), fitted)


def test_balanced_ranges_cover_everything_with_even_atoms() -> None:
    from ekd.data.sharded import balanced_ranges

    sizes = np.array([3, 5, 4, 20, 2, 2, 2, 9, 1])
    for parts in (1, 2, 3, 4, 12):
        ranges = balanced_ranges(sizes, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes) and len(ranges) == parts
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert balanced_ranges(sizes, 3) == [(0, 3), (3, 4), (4, 9)]  # 12, 20, 16 atoms
    even = np.full(1000, 7)
    atoms = [int(even[a:b].sum()) for a, b in balanced_ranges(even, 3)]
    assert max(atoms) - min(atoms) <= 7


def test_parallel_setting_is_checked(tmp_path: Path) -> None:
    from ekd.config import load_config
    from ekd.errors import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text("[data]\npath = 'embedded'\n[run]\nparallel = 'models'\n")
    with pytest.raises(ConfigError, match="parallel must be 'data' or 'teachers'"):
        load_config(path)


# ---- this file as a torchrun worker with an injected failure ------------------------------------------

def _inject(where: str, rank: int, at: int) -> None:
    """Make rank `rank` raise: in training at epoch `at` ("train"), or at its label batch `at` ("label")."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    if where == "train":
        from ekd.training import distributed

        original = distributed.DistributedTrainer._local_statistics

        def failing(self, ids):  # type: ignore[no-untyped-def]
            if self.epoch == at:
                raise RuntimeError("injected failure")
            return original(self, ids)

        distributed.DistributedTrainer._local_statistics = failing  # type: ignore[method-assign]
    elif where == "label":
        from ekd.distill import labels

        chunk = labels._label_chunk
        calls = [0]

        def failing_chunk(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] > at:
                raise RuntimeError("injected failure")
            return chunk(*args, **kwargs)

        labels._label_chunk = failing_chunk  # type: ignore[assignment]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))  # the checkout, for `tests.conftest`
    separator = sys.argv.index("--")
    if sys.argv[1] == "--fail":
        place, rank_text, at_text = sys.argv[2].split(":")
        _inject(place, int(rank_text), int(at_text))
    from ekd.train.__main__ import main

    sys.exit(main(sys.argv[separator + 1:]))
