"""`python -m ekd.study`: several pipeline seeds run for real (tiny models), their summaries
aggregated as mean ± sample standard deviation, finished runs kept on a second call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ekd.study import mean_spread, parse_variant
from ekd.study.__main__ import main

from tests.conftest import write_tiny_config


def test_mean_spread_by_hand() -> None:
    stats = mean_spread([1.0, 2.0, 4.0])
    assert stats["mean"] == pytest.approx(7.0 / 3.0)
    assert stats["std"] == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert mean_spread([0.5])["std"] == 0.0


def test_variant_parsing() -> None:
    variant = parse_variant("small:student.model={n_features = 4};baseline.enabled=false")
    assert variant.name == "small"
    assert variant.overrides == {"student.model": {"n_features": 4}, "baseline.enabled": False}


def test_study_two_seeds_and_a_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = write_tiny_config(tmp_path, epochs=2), tmp_path / "study"
    argv = [str(config), "--out", str(out), "--seeds", "2", "--jobs", "2",
            "--variant", "small:student.model={n_features = 4, n_sensitivities = 4, n_atom_layers = 1, "
                         "cutoff = 4.0, soft_max = 3.5};baseline.enabled=false",
            "--variant", "one teacher:teachers.subset=[1];baseline.enabled=false"]
    assert main(argv) == 0
    report = json.loads((out / "study.json").read_text())
    runs = {seed: json.loads((out / f"seed_{seed}" / "summary.json").read_text()) for seed in (0, 100)}

    # every figure is the mean and sample SD of the two runs' own test errors
    for model in ("teacher_0", "teacher_1", "ensemble", "baseline", "student"):
        values = [runs[seed]["models"][model]["test"]["force_rmse"] for seed in (0, 100)]
        stats = report["models"][model]["force_rmse"]
        assert stats["values"] == pytest.approx(values)
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    # seeds are independent: other teachers, other errors
    assert report["models"]["teacher_0"]["energy_rmse"]["std"] > 0
    ratio = [runs[s]["models"]["student"]["test"]["force_rmse"] / runs[s]["models"]["baseline"]["test"]["force_rmse"]
             for s in (0, 100)]
    assert report["models"]["student / baseline"]["force_rmse"]["values"] == pytest.approx(ratio)
    # the variant trained only a student, on its seed's teachers
    assert (out / "seed_0-small" / "student").exists() and not (out / "seed_0-small" / "baseline").exists()
    assert report["models"]["student (small)"]["force_rmse"]["n"] == 2
    assert report["parameters"]["student (small)"] < report["parameters"]["student"]
    # a subset of the pool: only teacher_1 copied, labels made again by it alone, its ensemble
    # reported (teacher_1 itself), its student compared with the seed's baseline
    assert sorted(p.name for p in (out / "seed_0-one teacher" / "teachers").iterdir()) == ["teacher_1"]
    one = {s: json.loads((out / f"seed_{s}-one teacher" / "summary.json").read_text()) for s in (0, 100)}
    assert report["models"]["ensemble (one teacher)"]["force_rmse"]["values"] == pytest.approx(
        [runs[s]["models"]["teacher_1"]["test"]["force_rmse"] for s in (0, 100)], rel=1e-6)
    assert report["models"]["student / baseline (one teacher)"]["force_rmse"]["values"] == pytest.approx(
        [one[s]["models"]["student"]["test"]["force_rmse"] / runs[s]["models"]["baseline"]["test"]["force_rmse"]
         for s in (0, 100)])
    assert "baseline (one teacher)" not in report["models"]
    table = (out / "study.md").read_text()
    assert "| student (small) | 2 |" in table and "student / baseline" in table
    # the uncertainties' calibration over the seeds, and the student's ρ over the ensemble's
    rho = [runs[s]["uncertainty"]["student"]["test"]["spearman"] / runs[s]["uncertainty"]["ensemble"]["test"]["spearman"]
           for s in (0, 100)]
    assert report["uncertainty"]["student ρ / ensemble ρ"]["spearman"]["values"] == pytest.approx(rho)
    assert report["uncertainty"]["ensemble"]["auc_worst_10pct"]["n"] == 2
    assert "| student (small) | 2 |" in table.split("Per-atom uncertainty")[1]

    # a second call keeps every finished run
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed_*/summary.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed_*/summary.json")} == stamps


def test_study_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny_config(tmp_path)
    assert main([str(config), "--out", str(tmp_path / "s"), "--variant", "x:student.train.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
