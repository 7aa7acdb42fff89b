"""Files from strangers, fuzzed: damaged copies of an exported model (its metadata and the
TorchScript archive around it, loaded by `pair_style ekd` in LAMMPS and by ekd's Python loader),
of small HDF5, extended XYZ and npz data files, of a training checkpoint and of a labels file. Every case must end
in a valid load or ekd's own error naming the file: no crash, hang, foreign exception or
non-finite result. The engine is examples/hardening/fuzz_files.py (longer runs: see its
docstring); each target runs here in its own process tree, seeded, so a failing case replays with
`--first K --cases 1`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "examples" / "hardening" / "fuzz_files.py"

# cases per target: 2,100 in all, about 3 minutes on 2 cores
CASES = {"lammps-metadata": 300, "lammps-archive": 300, "python-metadata": 400, "python-archive": 300,
         "data": 400, "checkpoint": 200, "labels": 200}


@pytest.mark.parametrize("target", sorted(CASES))
def test_damaged_files_load_or_are_refused(target: str, tiny_exports: dict, tiny_run: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, str(FUZZ), target, "--model", str(tiny_exports["student"]), "--run", str(tiny_run),
               "--cases", str(CASES[target]), "--seed", "7",
               "--timeout", "120", "--json", str(report_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert report_path.exists(), f"the fuzz run did not finish:\n{run.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    assert report["cases"] == CASES[target]
    assert report["failures"] == [], json.dumps(report["failures"][:5], indent=1)
    assert run.returncode == 0, run.stderr[-3000:]
    # the damage reaches the readers: most cases are refused, each with ekd's own message
    assert report["outcomes"].get("refused", 0) >= CASES[target] // 4, report["outcomes"]


def _engine():
    spec = importlib.util.spec_from_file_location("fuzz_files", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_files"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


WORKER = """
import json, os, sys, time
print(json.dumps({"case": 3, "start": True}), flush=True)
print(json.dumps({"case": 3, "kind": "refused", "detail": "DataError: x"}), flush=True)
print(json.dumps({"case": 4, "start": True}), flush=True)
if sys.argv[1] == "crash":
    os.abort()
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["crash", "hang"])
def test_the_engine_records_a_worker_that_dies_or_hangs(how: str) -> None:
    """A real process that aborts (SIGABRT, as a C++ crash would) or stops answering in its
    fifth case: the case is recorded as a crash or hang, the cases before it as reported, and
    the next worker starts after it."""
    fuzz = _engine()
    report = fuzz.Report("test")
    following = fuzz.one_worker([sys.executable, "-c", WORKER, how], timeout=3.0, end=10, report=report)
    assert following == 5
    assert report.kinds == {"refused": 1, how: 1}
    assert report.failures[0]["case"] == 4 and report.failures[0]["kind"] == how
