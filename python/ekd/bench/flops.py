"""How close the model comes to this machine's matrix-multiply peak: the matrix-product FLOPs of
one call of an exported model (`torch.utils.flop_counter`, which sees TorchScript's operators
too: mm, addmm, bmm, forward and the backward the forces need), and the single-precision GEMM
rate of this process on the same threads, measured in the same run.

The FLOPs are those the model executes, empty slots of HIP-NN's padded neighbour layout
included; ekd's neighbour sums (`models/neighbour_sum.cpp`, which replace that layout's batched
products) count 2·edges·ν·F each, their multiply-adds. Element-wise work (sensitivities,
activations, gathers, scatter-adds, and layer 0's sum of sensitivities by species, `species_sum`
and `species_gather`) is not counted: it is what keeps a model below the GEMM rate. (Before
those two operators, 2026-12-02, layer 0 was a neighbour sum of one-hot features padded to 8
columns and counted as such: 0.311 instead of 0.280 MFLOP per atom for the demo student.)
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from ..models.operators import fused_available

GEMM_SIZE = 1024  # n of the n × n float32 product timed for the machine's rate (cache-blocked, compute-bound)


_counted_ekd_operators = False


def count_ekd_operators() -> None:
    """Teach the FLOP counter ekd's neighbour sums (once; nothing if they are not loaded)."""
    global _counted_ekd_operators
    if _counted_ekd_operators or not fused_available():
        return
    _counted_ekd_operators = True

    @register_flop_formula(torch.ops.ekd.environment)
    def environment(s_shape: Any, z_shape: Any, *args: Any, **kwargs: Any) -> int:
        return 2 * s_shape[0] * s_shape[1] * z_shape[1]

    @register_flop_formula(torch.ops.ekd.edge_contraction)
    def edge_contraction(g_shape: Any, z_shape: Any, row_ptr: Any, senders_shape: Any, *args: Any,
                         **kwargs: Any) -> int:
        return 2 * senders_shape[0] * g_shape[1] * g_shape[2]

    @register_flop_formula(torch.ops.ekd.sender_sum)
    def sender_sum(s_shape: Any, g_shape: Any, *args: Any, **kwargs: Any) -> int:
        return 2 * s_shape[0] * s_shape[1] * g_shape[2]


def matmul_flops(module: Any, args: Sequence[Any]) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one call of `module` on `args`."""
    count_ekd_operators()
    with FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


def sgemm_gflops(threads: int, repeats: int = 7) -> float:
    """This process's float32 GEMM rate (GFLOP/s) on `threads` threads: the best of `repeats`
    n × n products, n = GEMM_SIZE."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=generator)
        b = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=generator)
        out = torch.empty(GEMM_SIZE, GEMM_SIZE)
        torch.mm(a, b, out=out)  # warm-up: threads and pages
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * GEMM_SIZE**3 / best / 1e9
