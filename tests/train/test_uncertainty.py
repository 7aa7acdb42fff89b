"""The student's uncertainty head in the method: it changes nothing the student learns, is
calibrated (or says why not), and the summary reports every uncertainty's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ekd.errors import ConfigError
from ekd.config import load_config
from ekd.train.__main__ import main
from ekd.training import read_checkpoint


def test_a_student_without_head_learns_the_same_weights(tiny_run: Path, tmp_path: Path) -> None:
    config = (tiny_run.parent / "tiny.toml").read_text()
    assert "uncertainty_head" not in config  # the tiny run's student has the default head
    without = tmp_path / "without.toml"
    without.write_text(config.replace("[student]\n", "[student]\nuncertainty_head = 0\n"))
    assert main([str(without), "--out", str(tmp_path / "run"), "--teachers-from", str(tiny_run), "--quiet"]) == 0
    headed = read_checkpoint(tiny_run / "student/checkpoint.pt")
    plain = read_checkpoint(tmp_path / "run/student/checkpoint.pt")
    assert headed["best_epoch"] == plain["best_epoch"]
    assert any(k.startswith("uncertainty_head.") for k in headed["best_state"])
    for name, tensor in plain["best_state"].items():
        assert torch.equal(tensor, headed["best_state"][name]), name


def test_calibration_says_why_it_was_not_fitted(tiny_run: Path) -> None:
    """The embedded data have true forces on the test split only: no scale can be fitted on val."""
    state = read_checkpoint(tiny_run / "student/checkpoint.pt")
    assert state["calibration"] == {"uncertainty_scale": 1.0, "fitted_on": None,
                                    "reason": "the validation split has no true forces"}
    assert float(state["best_state"]["uncertainty_head.scale"]) == 1.0


def test_summary_reports_the_uncertainties(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    for name in ("ensemble", "student"):
        test = summary["uncertainty"][name]["test"]
        assert test["count"] > 100 and test["rms_spread"] > 0
        assert -1 <= test["spearman"] <= 1 and 0 <= test["auc_worst_10pct"] <= 1
    assert "baseline" not in summary["uncertainty"] and "val" not in summary["uncertainty"]["student"]
    assert "| student | test |" in (tiny_run / "summary.md").read_text()


@pytest.mark.parametrize("text, message", [
    ("[student]\nmodel = {uncertainty_head = 4}\n", "give uncertainty_head in [student], not in model"),
    ("[student]\nkind = 'equivariant'\nmodel = {}\n", "only hipnn students have an uncertainty head"),
    ("[student]\nuncertainty_head = -1\n", "uncertainty_head must be >= 0"),
    ("[teachers.train]\nuncertainty_weight = 1.0\n", "[teachers.train] uncertainty_weight must be 0"),
    ("[teachers]\nmodel = {uncertainty_head = 4}\n", "teachers have no uncertainty head"),
])
def test_uncertainty_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[data]\npath = 'embedded'\n" + text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
