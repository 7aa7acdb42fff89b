"""Reading checkpoints never runs code from the file (torch.load with weights_only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ekd.errors import ModelFileError
from ekd.models import read_checkpoint


class CreatesAFile:
    """Unpickling this object would run `touch`: what a crafted checkpoint could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "ran"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"format": "ekd-checkpoint", "version": 1, "payload": CreatesAFile(target)}, crafted)
    with pytest.raises(ModelFileError, match=r"checkpoint.pt: refused: .*unsupported GLOBAL \S*system.*could run code"):
        read_checkpoint(crafted)
    assert not target.exists()


def test_ekd_checkpoints_load(tiny_run: Path) -> None:
    state = read_checkpoint(tiny_run / "student/checkpoint.pt")
    assert state["format"] == "ekd-checkpoint" and state["finished"]
