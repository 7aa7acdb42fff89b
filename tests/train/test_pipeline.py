"""`python -m ekd.train`: the whole method end to end, resumption after a real kill, the
command line's errors, reusing another run's teachers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.config import load_config
from ekd.errors import ConfigError, EkdError
from ekd.run_directory import open_run
from ekd.train import run_stages
from ekd.train.__main__ import main
from ekd.training import read_checkpoint
from tests.conftest import write_tiny_config

MODELS = ["teacher_0", "teacher_1", "ensemble", "baseline", "student"]
METRICS = ["energy_mae", "energy_rmse", "force_mae", "force_rmse"]


def test_summary_has_every_model_split_and_metric(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["units"] == {"energy": "eV", "forces": "eV/Angstrom"}
    assert list(summary["models"]) == MODELS
    for model in MODELS:
        for split in ("train", "val", "test"):
            metrics = summary["models"][model][split]
            assert all(key in metrics for key in METRICS)
            assert metrics["energy_rmse"] > 0 and np.isfinite(metrics["energy_rmse"])
        # the embedded data have true CCSD(T) forces on the test split only
        assert summary["models"][model]["test"]["force_rmse"] > 0
        assert summary["models"][model]["train"]["force_rmse"] is None
    for name in ("split.json", "references.json", "labels.h5", "summary.md", "plots/energy_parity_test.png",
                 "plots/force_parity_test.png", "student/metrics.jsonl", "teachers/teacher_1/checkpoint.pt"):
        assert (tiny_run / name).exists(), name


def test_student_learned_from_the_labels(tiny_run: Path) -> None:
    history = [json.loads(line) for line in (tiny_run / "student/metrics.jsonl").read_text().splitlines()]
    assert {"energy", "forces", "atom_energy"} <= set(history[0]["train"])
    baseline = [json.loads(line) for line in (tiny_run / "baseline/metrics.jsonl").read_text().splitlines()]
    assert "forces" not in baseline[0]["train"]


def _train(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ekd.train", *args, "--quiet"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path, epochs=12)
    straight = _train([str(config), "--out", "straight", "--stage", "teachers"], tmp_path)
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    killed = _train([str(config), "--out", "killed", "--stage", "teachers"], tmp_path)
    checkpoint = tmp_path / "killed/teachers/teacher_0/checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        if checkpoint.exists() and 2 <= read_checkpoint(checkpoint)["epoch"] < 10:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted_at = read_checkpoint(checkpoint)["epoch"]
    assert not read_checkpoint(checkpoint)["finished"], "the kill must land mid-training"

    refused = _train([str(config), "--out", "killed", "--stage", "teachers"], tmp_path)
    assert refused.wait(timeout=120) == 2
    assert "interrupted run; pass --resume" in refused.stdout.read()

    resumed = _train([str(config), "--out", "killed", "--stage", "teachers", "--resume"], tmp_path)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert f"resuming from epoch {interrupted_at}" in out
    for k in range(2):
        a = read_checkpoint(tmp_path / f"straight/teachers/teacher_{k}/checkpoint.pt")
        b = read_checkpoint(tmp_path / f"killed/teachers/teacher_{k}/checkpoint.pt")
        assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"]
        for name, tensor in a["best_state"].items():
            assert torch.equal(tensor, b["best_state"][name]), name
    assert len((tmp_path / "killed/teachers/teacher_0/metrics.jsonl").read_text().splitlines()) == 12


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "absent.toml")]) == 2
    assert "error: config file not found" in capsys.readouterr().err


def test_changed_config_is_refused(tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path, epochs=1))
    open_run(tmp_path / "run", config, progress=False)
    config.teachers.count = 3
    with pytest.raises(ConfigError, match="teachers.count: saved 2, now 3"):
        open_run(tmp_path / "run", config, progress=False)


def test_missing_teachers_for_later_stage(tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path, epochs=1))
    with pytest.raises(EkdError, match="teacher_0 is not trained yet"):
        run_stages(config, tmp_path / "run", "label", resume=False, progress=False)


def test_teachers_from_another_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_path = tiny_run.parent / "tiny.toml"
    text = config_path.read_text().replace("atom_energy_weight = 0.1", "atom_energy_weight = 0.0")
    other = tmp_path / "other.toml"
    other.write_text(text)
    assert main([str(other), "--out", str(tmp_path / "run"), "--teachers-from", str(tiny_run), "--quiet"]) == 0
    for k in range(2):
        a = tiny_run / f"teachers/teacher_{k}/checkpoint.pt"
        assert (tmp_path / f"run/teachers/teacher_{k}/checkpoint.pt").read_bytes() == a.read_bytes()
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["models"]["teacher_0"] == json.loads((tiny_run / "summary.json").read_text())["models"]["teacher_0"]
    refused = tmp_path / "refused.toml"
    refused.write_text(text.replace("count = 2", "count = 3"))
    capsys.readouterr()
    assert main([str(refused), "--out", str(tmp_path / "run2"), "--teachers-from", str(tiny_run)]) == 2
    assert "its [teachers] differs from this config's" in capsys.readouterr().err
