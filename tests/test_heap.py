"""`ekd.heap.keep_freed_memory`: after it, a large tensor allocated again reuses the pages of the
one freed before it (the kernel faults almost none in), as `pair_style ekd ... heap keep`; the
C library's defaults fault every page in again. Measured in child processes (the setting is
per process), with the minor page faults getrusage counts."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from ekd.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_one_table():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    table = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
    del table
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_table()
print(min(faults_of_one_table() for _ in range(3)))
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_kept_memory_is_reused_without_page_faults() -> None:
    pages = 64 * 2**20 // 4096
    kept, default = faults("keep"), faults("default")
    print(f"\nminor page faults per 64 MiB table: {kept} kept, {default} with glibc's defaults ({pages} pages)")
    assert default > pages // 2
    assert kept < pages // 20
