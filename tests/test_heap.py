"""`ekd.heap.keep_freed_memory`: after it, a large tensor freed stays with the process (its pages
are not handed back, so the next call reuses them instead of faulting them in again), as
`pair_style ekd ... heap keep`; with the C library's defaults a 64 MiB table goes back to the
system when freed. Measured in child processes (the setting is per process) by their resident
memory just before and after each `del`."""

from __future__ import annotations

import platform
from pathlib import Path
import subprocess
import sys

import pytest

CHILD = """
import sys, torch
from ekd.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
elif sys.argv[1] == "calculator":  # EKDCalculator keeps it by default, keep_memory=False does not
    from ekd.calculator import EKDCalculator
    EKDCalculator(sys.argv[2], keep_memory=sys.argv[3] == "yes")
def resident_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
returned = []
for _ in range(3):
    table = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
    held = resident_mib()
    del table
    returned.append(held - resident_mib())
print(max(returned))
"""


def returned_mib(*args: str) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
                    reason="the setting is glibc's; resident memory from /proc")
def test_freed_tables_stay_with_the_process() -> None:
    kept, default = returned_mib("keep"), returned_mib("default")
    print(f"\nMiB handed back to the system when a 64 MiB table is freed: {kept:.1f} kept, {default:.1f} by default")
    assert default > 48
    assert kept < 4


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
                    reason="the setting is glibc's; resident memory from /proc")
def test_the_calculator_keeps_freed_memory_unless_told_not_to(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    from ekd.export import export_model

    model = tmp_path / "student.pt"
    export_model([tiny_run / "student/checkpoint.pt"], model, torch.float64)
    assert returned_mib("calculator", str(model), "yes") < 4
    assert returned_mib("calculator", str(model), "no") > 48
