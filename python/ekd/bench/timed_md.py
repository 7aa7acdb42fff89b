"""One timed LAMMPS MD run of a model through `pair_style ekd`, with LAMMPS's own timings and
the run's peak memory (ekd.md.lammps_driver runs it).

Warm-up steps come first (model loading, first allocations, JIT profiling), then the timed run,
whose `Performance:` line and timing breakdown give the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

from ase import Atoms

from ..md.lammps_driver import (Performance, neighbor_lines, pair_lines, read_loop_time, read_performance,
                                run_lammps, system_lines, thermo_lines, write_data)


@dataclass(kw_only=True)
class MDResult(Performance):
    """A timed run: LAMMPS's figures (NaN if it failed), what was run, and how it went."""

    ok: bool
    atoms: int
    ranks: int
    threads: int
    steps: int
    peak_rss_mb: float = math.nan        # every rank's peak, summed
    rank_peak_rss_mb: float = math.nan   # the largest rank's peak
    error: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Uncertainty:
    """What a timed run asks of the pair style's per-atom uncertainty: every `every` steps, from
    the model itself (its head, or an ensemble's deviation) or from a `committee` file."""

    every: int
    committee: Optional[Path] = None


def deck(model: Path, elements: list[str], steps: int, warmup: int, timestep_fs: float = 0.25,
         uncertainty: Optional[Uncertainty] = None) -> str:
    """NVE from 300 K in metal units: `warmup` untimed steps, then `steps` timed ones; with
    `uncertainty`, the per-atom uncertainty stored by fix pair every `every` steps."""
    keywords, extra = "", []
    if uncertainty is not None:
        if uncertainty.committee is not None:
            keywords = f"committee {uncertainty.committee} every {uncertainty.every}"
        extra = [f"fix u all pair {uncertainty.every} ekd uncertainty 1", "compute umax all reduce max f_u"]
    pair = pair_lines(model, elements, keywords)
    return "\n".join([system_lines(), pair, neighbor_lines(), *extra,
                      "velocity all create 300.0 4928459 mom yes rot yes", "fix nve all nve",
                      f"timestep {timestep_fs / 1000.0}", thermo_lines(every=max(steps, 1)),
                      f"run {warmup}", f"run {steps}", ""])



def run_md(folder: Path, model: Path, atoms: Atoms, elements: list[str], ranks: int, threads: int,
           steps: int, warmup: int, timeout: float = 3600.0, uncertainty: Optional[Uncertainty] = None) -> MDResult:
    """Run MD and read LAMMPS's own timings; a failed run returns ok=False with the error."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "data.lmp", atoms, elements)
    (folder / "in.deck").write_text(deck(model.resolve(), elements, steps, warmup, uncertainty=uncertainty))
    run = run_lammps(folder / "in.deck", ranks=ranks, threads=threads, timeout=timeout)
    figures = read_performance(run.log) if run.ok else None
    loop = read_loop_time(run.log)
    result = MDResult(**asdict(figures or Performance()), ok=figures is not None, atoms=len(atoms), ranks=ranks,
                      threads=threads, steps=steps, peak_rss_mb=run.peak_rss_mb,
                      rank_peak_rss_mb=run.rank_peak_rss_mb)
    if figures is None:
        result.error = run.error or "no Performance line in the LAMMPS log"
    elif loop is not None:  # always, with a Performance line
        result.extra["loop_seconds"] = loop[0]
    return result
