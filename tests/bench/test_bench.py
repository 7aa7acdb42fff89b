"""The benchmark's quick mode on a tiny system: report structure, positive finite figures,
and its bad-input messages (no timing thresholds: speed goals live in the benchmark)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import torch

from ekd.bench.__main__ import main
from ekd.bench.flops import matmul_flops


def test_quick_benchmark_report(tiny_run: Path, tmp_path: Path) -> None:
    assert main([str(tiny_run), "--quick", "--ase", "--models", "student,teacher_0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    atoms = report["runs"][0]["atoms"]
    assert set(report["ase_md"]) == {f"student@{atoms}", f"teacher_0@{atoms}"}  # ASE MD beside LAMMPS
    assert all(0 < seconds < 60 for seconds in report["ase_md"].values())
    assert {r["model"] for r in report["runs"]} == {"student", "teacher_0"}
    for run in report["runs"]:
        assert run["ok"], run["error"]
        for key in ("katom_step_per_s", "timesteps_per_s", "ns_per_day", "peak_rss_mb", "pair_fraction", "model_ms"):
            assert math.isfinite(run[key]) and run[key] > 0, key
        assert math.isfinite(run["overhead"])
    assert report["ratios"] and report["ratios"][0]["speed"] > 0
    fractions = {r["model"]: r for r in report["machine_fraction"]}  # the model alone against sgemm
    assert set(fractions) == {"student", "teacher_0"}
    assert fractions["teacher_0"]["mflop_per_atom"] > fractions["student"]["mflop_per_atom"] > 0
    for row in fractions.values():
        assert 0 < row["of_sgemm"] < 1.5 and row["sgemm_gflops"] > 0
    assert report["accuracy"]["student"]["energy_rmse"] > 0
    assert (tmp_path / "bench.md").read_text().count("| student |") == 3  # LAMMPS, FLOP rate and ASE tables
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_uncertainty_and_committee_rows(tiny_run: Path, tiny_exports: dict, tmp_path: Path) -> None:
    """--uncertainty N times the student with its head's uncertainty stored every N steps and the
    ensemble with its deviation; --committee adds the student watched by the ensemble."""
    argv = [str(tiny_run), "--quick", "--models", "student,ensemble", "--uncertainty", "2",
            "--committee", str(tiny_exports["ensemble"]), "--out", str(tmp_path)]
    assert main(argv) == 0
    runs = {r["model"]: r for r in json.loads((tmp_path / "bench.json").read_text())["runs"]}
    assert set(runs) == {"student", "ensemble", "student+u", "ensemble+u", "student+committee"}
    assert all(r["ok"] and r["katom_step_per_s"] > 0 for r in runs.values())
    deck = (tmp_path / "runs" / f"student+committee_{runs['student']['atoms']}_1" / "in.deck").read_text()
    assert f"committee {tiny_exports['ensemble']} every 2" in deck and "fix u all pair 2 ekd uncertainty 1" in deck


def test_bad_inputs(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "absent.pt"), "--quick"]) == 2
    assert "model file not found" in capsys.readouterr().err
    # one copy of the molecules at 20 g/cm³: a box edge of a few Å, below cutoff + skin
    assert main([str(tiny_run), "--models", "student", "--sizes", "10", "--density", "20", "--out",
                 str(tmp_path)]) == 2
    assert "smaller than the cutoff" in capsys.readouterr().err


def test_model_alone_failing_is_reported_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ase.build import molecule

    from ekd.bench.model_timing import time_model_in_child

    (tmp_path / "junk.pt").write_text("not a TorchScript file")
    box = molecule("H2O", vacuum=5.0)
    box.pbc = True
    assert time_model_in_child(tmp_path / "junk.pt", box, threads=1, folder=tmp_path / "run") is None
    printed = capsys.readouterr().out
    assert "model alone: " in printed and "junk.pt failed: " in printed, printed


def test_matmul_flops_by_hand() -> None:
    """2 FLOPs per multiply-add of mm, addmm and bmm, counted through TorchScript and in the
    backward of a gradient taken inside it, as in an exported model's call."""
    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(5, 7)  # addmm (3, 5) @ (5, 7)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x.requires_grad_()
            energy = (torch.bmm(self.linear(x).unsqueeze(0), y) ** 2).sum()  # (1, 3, 7) @ (1, 7, 2)
            grad = torch.autograd.grad([energy], [x])[0]
            assert grad is not None
            return grad

    x, y = torch.randn(3, 5), torch.randn(1, 7, 2)
    forward = 2 * 3 * 5 * 7 + 2 * 3 * 7 * 2
    backward = 2 * 3 * 2 * 7 + 2 * 3 * 7 * 5  # bmm's grad to its input, the linear's grad to x
    assert matmul_flops(torch.jit.script(Toy()), (x, y)) == forward + backward
