"""Faults during long work: `python -m ekd.train` when a result file cannot be written.

The training command line runs under a file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets)
rather than on a small filesystem made for the test: mounting a tmpfs or a loop device needs
root, or a user namespace that many machines and CI runners forbid, while any process may lower
its own limit. A write past the limit fails with EFBIG where one on a full disk fails with
ENOSPC; both reach ekd as the same OSError, refused by the same code (on a 240 kB tmpfs, by
hand, the messages differ only in the system's words). The kernel's answer to a write past the
limit is the signal SIGXFSZ, whose default action kills the process, which is a kill mid-write
(test_pipeline covers those); ignored, the write fails with EFBIG instead, as on a full disk.

One run of the tiny config meets two limits, taken from the files of the uninterrupted tiny
run (`tiny_run`, the same config) so that they follow the files' real sizes:
- training: one byte under a finished teacher checkpoint. A checkpoint grows by one history row
  per epoch, so teacher_0 saves epochs 1 and 2 and is refused the checkpoint of its last epoch
  (also when resumed under the same limit);
- labelling: half the labels file, which is far larger than any checkpoint: the teachers finish
  and the labels file cannot be made (ekd claims its whole space when it creates it).
Each time the run must stop with one line naming the file, leave no half-written file that a
later run would trust, and keep what was finished byte for byte; `--resume` without a limit
must then end with exactly the uninterrupted run's labels, weights and summary (as after a
kill, test_pipeline). One test, one run: the walls are met in the order a long run meets them,
and the module stays fast (one summary, five short processes).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import h5py
import numpy as np
import torch

from ekd.fileio import file_sha256
from ekd.training import read_checkpoint
from tests.conftest import write_tiny_config

TEACHERS = ["teachers/teacher_0", "teachers/teacher_1"]


def _file_size_limit(limit: int) -> Callable[[], None]:
    """Run in the child before ekd starts: writes beyond `limit` bytes fail with EFBIG
    instead of killing the process (see the module docstring). Between fork and exec only
    two system calls happen here, nothing that could wait on a lock of the parent's threads."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _train(args: List[str], cwd: Path, limit: Optional[int] = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ekd.train", *args, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(limit) if limit is not None else None)


def _assert_refused(result: subprocess.CompletedProcess, path: str) -> None:
    """The run stopped with one line naming the file it could not write, and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: could not write {path}: File too large (disk full or file-size limit?)"), \
        lines[0]
    assert lines[0].endswith("continue with --resume"), lines[0]


def _half_written(run: Path) -> List[Path]:
    """Files a write in progress leaves: temporary (hidden) names, partial labels, merges."""
    return [p for p in run.rglob("*") if p.is_file() and
            (p.name.startswith(".") or p.suffix in (".partial", ".merging", ".writing"))]


def _hashes(run: Path) -> Dict[str, str]:
    return {str(p.relative_to(run)): file_sha256(p) for p in sorted(run.glob("teachers/*/checkpoint.pt"))}


def _assert_same_model(expected: Path, actual: Path) -> None:
    """The same epochs, losses and weights (timings aside), as test_pipeline's resume test."""
    a, b = read_checkpoint(expected / "checkpoint.pt"), read_checkpoint(actual / "checkpoint.pt")
    assert (a["epoch"], a["best_epoch"], a["finished"]) == (b["epoch"], b["best_epoch"], b["finished"]), actual
    for key in ("best_state", "model_state"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{actual} {key} {name}"
    untimed = [[{k: v for k, v in row.items() if k not in ("time", "conformations_per_s")} for row in s["history"]]
               for s in (a, b)]
    assert untimed[0] == untimed[1], actual
    assert len((actual / "metrics.jsonl").read_text().splitlines()) == a["epoch"]


def test_a_run_that_cannot_write_stops_cleanly_and_resumes_exactly(tiny_run: Path, tmp_path: Path) -> None:
    """One run meets two walls, a checkpoint and then the labels, and ends as if it never had."""
    config = write_tiny_config(tmp_path)  # tiny_run's config
    args = [str(config), "--out", "run"]
    _a_checkpoint_is_refused(tiny_run, tmp_path, args)
    teachers = _the_labels_are_refused(tiny_run, tmp_path, args)
    resumed = _train([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "teacher_0: already trained" in resumed.stdout
    assert _hashes(tmp_path / "run") == teachers, "the finished teachers are kept byte for byte"
    _assert_same_run(tiny_run, tmp_path / "run")


def _a_checkpoint_is_refused(tiny_run: Path, tmp_path: Path, args: List[str]) -> None:
    """teacher_0 saves epochs 1 and 2 and is refused the checkpoint of epoch 3, twice."""
    limit = (tiny_run / TEACHERS[0] / "checkpoint.pt").stat().st_size - 1
    checkpoint = tmp_path / "run" / TEACHERS[0] / "checkpoint.pt"
    failed = _train(args, tmp_path, limit)
    _assert_refused(failed, f"run/{TEACHERS[0]}/checkpoint.pt")
    assert "the previous checkpoint.pt is intact" in failed.stderr
    kept = read_checkpoint(checkpoint)
    assert kept["epoch"] == 2 and not kept["finished"], "the last epoch's checkpoint is the one refused"
    assert len((checkpoint.parent / "metrics.jsonl").read_text().splitlines()) == 2
    assert not _half_written(tmp_path / "run")
    before = file_sha256(checkpoint)

    again = _train([*args, "--resume"], tmp_path, limit)  # the same wall, from the kept checkpoint
    assert "teacher_0: resuming from epoch 2" in again.stdout, again.stdout
    _assert_refused(again, f"run/{TEACHERS[0]}/checkpoint.pt")
    assert file_sha256(checkpoint) == before, "a refused write leaves the previous checkpoint's bytes"
    assert not _half_written(tmp_path / "run")


def _the_labels_are_refused(tiny_run: Path, tmp_path: Path, args: List[str]) -> Dict[str, str]:
    """The teachers finish under a limit their checkpoints fit; the labels file does not. Returns
    the teachers' checkpoint hashes."""
    run = tmp_path / "run"
    limit = (tiny_run / "labels.h5").stat().st_size // 2
    assert max((tiny_run / t / "checkpoint.pt").stat().st_size for t in TEACHERS) < limit
    failed = _train([*args, "--resume"], tmp_path, limit)
    assert "teacher_1: reached max_epochs" in failed.stdout, failed.stdout
    _assert_refused(failed, "run/labels.h5.partial")
    assert "MB and was removed" in failed.stderr
    assert not (run / "labels.h5").exists() and not _half_written(run)
    teachers = _hashes(run)
    assert len(teachers) == 2
    return teachers


def _assert_same_run(expected: Path, run: Path) -> None:
    """Labels, every model and the summary of the uninterrupted run."""
    with h5py.File(expected / "labels.h5", "r") as a, h5py.File(run / "labels.h5", "r") as b:
        assert set(a) == set(b) and bool(b.attrs["complete"])
        for name in a:
            assert np.array_equal(a[name][()], b[name][()]), name
    for model in [*TEACHERS, "student", "baseline"]:
        _assert_same_model(expected / model, run / model)
    summary = [json.loads((folder / "summary.json").read_text())["models"] for folder in (expected, run)]
    assert summary[0] == summary[1]
    assert not _half_written(run)
