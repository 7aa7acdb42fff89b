"""The benchmark report: a Markdown table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

from ..fileio import atomic_write_text


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def markdown(report: Dict[str, Any]) -> str:
    lines = [f"# MD benchmark: {report['source']}", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; LAMMPS `pair_style ekd`, NVE 0.25 fs, "
             f"{report['steps']} timed steps after {report['warmup']} warm-up steps; "
             "models alternated so machine drift hits all alike.", "",
             "| model | atoms | ranks × threads | katom-step/s | timesteps/s | ns/day | pair share | model alone (ms/step) "
             "| model alone, memory added (MB) | pair-style overhead | peak memory, all ranks / largest rank (MB) "
             "| test E RMSE (meV) | test F RMSE (meV/Å) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["runs"]:
        accuracy = report["accuracy"].get(row["model"], {})
        if not row["ok"]:
            lines.append(f"| {row['model']} | {row['atoms']} | {row['ranks']} × {row['threads']} | failed: "
                         f"{row['error'][:80]} ||||||||||")
            continue
        lines.append(
            f"| {row['model']} | {row['atoms']} | {row['ranks']} × {row['threads']} | {_f(row['katom_step_per_s'])} | "
            f"{_f(row['timesteps_per_s'])} | {_f(row['ns_per_day'])} | {_f(row['pair_fraction'] * 100, 3)}% | "
            f"{_f(row.get('model_ms'))} | {_f(row.get('model_mb'), 4)} | {_percent(row.get('overhead'))} | "
            f"{_f(row['peak_rss_mb'], 4)} / {_f(row.get('rank_peak_rss_mb'), 4)} | "
            f"{_f(_scaled(accuracy.get('energy_rmse')), 3)} | "
            f"{_f(_scaled(accuracy.get('force_rmse')), 3)} |")
    if report.get("ratios"):
        lines += ["", "Student against one teacher (same size, same ranks, side by side):", "",
                  "| atoms | ranks | throughput ratio | memory ratio |", "|---:|---:|---:|---:|"]
        for r in report["ratios"]:
            lines.append(f"| {r['atoms']} | {r['ranks']} | {_f(r['speed'])}× | {_f(r['memory'])} |")
    lines += _flop_lines(report)
    lines += _memory_lines(report)
    lines += _ase_lines(report)
    return "\n".join(lines) + "\n"


def machine_fraction(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per model and size, the model alone against this machine's GEMM rate: matrix-product
    FLOPs per atom, the rate they ran at (FLOPs / the model's fastest time) and its fraction of
    the float32 GEMM rate measured in the same child process (`bench/flops.py`)."""
    out = []
    for key, counted in report.get("model_flops", {}).items():
        seconds = report["model_alone"].get(key)
        if not seconds:
            continue
        name, atoms = key.rsplit("@", 1)
        rate = counted["matmul_flops"] / seconds / 1e9
        out.append({"model": name, "atoms": int(atoms), "threads": counted["threads"],
                    "mflop_per_atom": counted["matmul_flops"] / int(atoms) / 1e6,
                    "us_per_atom": seconds / int(atoms) * 1e6, "gflops": rate,
                    "sgemm_gflops": counted["sgemm_gflops"], "of_sgemm": rate / counted["sgemm_gflops"]})
    return out


def _flop_lines(report: Dict[str, Any]) -> List[str]:
    rows = machine_fraction(report)
    if not rows:
        return []
    lines = ["", "The model alone against this machine: matrix-product FLOPs (mm, addmm, bmm; forward and the "
             "backward the forces need) of one call, the rate they ran at, and its fraction of float32 GEMM "
             "(n = 1024) on the same threads in the same process:", "",
             "| model | atoms | threads | matmul MFLOP per atom | µs per atom | GFLOP/s | sgemm GFLOP/s | of sgemm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['atoms']} | {r['threads']} | {_f(r['mflop_per_atom'])} | "
                     f"{_f(r['us_per_atom'])} | {_f(r['gflops'])} | {_f(r['sgemm_gflops'])} | "
                     f"{r['of_sgemm']:.1%} |")
    return lines


def marginal_memory(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Memory per additional atom of each model and rank count, between consecutive sizes: the
    growth of the summed peak of all ranks over the growth in atoms (kB per atom), so the fixed
    cost of every process (libraries, model, LAMMPS) drops out."""
    out = []
    sizes: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in runs:
        if row["ok"] and math.isfinite(row["peak_rss_mb"]):
            sizes.setdefault((row["model"], row["ranks"]), []).append(row)
    for (model, ranks), rows in sizes.items():
        rows = sorted(rows, key=lambda r: r["atoms"])
        for small, large in zip(rows, rows[1:]):
            if large["atoms"] > small["atoms"]:
                out.append({"model": model, "ranks": ranks, "from": small["atoms"], "to": large["atoms"],
                            "kb_per_atom": (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024.0
                            / (large["atoms"] - small["atoms"])})
    return out


def _memory_lines(report: Dict[str, Any]) -> List[str]:
    rows = marginal_memory(report["runs"])
    if not rows:
        return []
    lines = ["", "Memory per additional atom (growth of the summed peak of all ranks between two sizes):", "",
             "| model | ranks | atoms | kB per atom |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ranks']} | {r['from']} → {r['to']} | {_f(r['kb_per_atom'])} |")
    return lines


def _ase_lines(report: Dict[str, Any]) -> List[str]:
    """ASE MD against the one-rank LAMMPS run of the same model and box (`--ase`)."""
    if not report.get("ase_md"):
        return []
    lines = ["", "MD in ASE (Velocity Verlet through EKDCalculator, one process) against LAMMPS on one rank, "
             "same model, box and threads:", "",
             "| model | atoms | ASE katom-step/s | LAMMPS katom-step/s | ASE / LAMMPS |", "|---|---:|---:|---:|---:|"]
    one_rank = {(r["model"], r["atoms"]): r for r in report["runs"] if r["ok"] and r["ranks"] == 1}
    for key, seconds in report["ase_md"].items():
        name, atoms = key.rsplit("@", 1)
        ase_rate = int(atoms) / seconds / 1e3
        lammps = one_rank.get((name, int(atoms)))
        lammps_rate = lammps["katom_step_per_s"] if lammps else None
        lines.append(f"| {name} | {atoms} | {_f(ase_rate)} | {_f(lammps_rate)} | "
                     f"{_f(ase_rate / lammps_rate) + '×' if lammps_rate else '—'} |")
    return lines


def _percent(fraction: Any) -> str:
    """A fraction as a signed percentage; a dash where it was not measured (several ranks)."""
    return "—" if fraction is None else f"{fraction * 100:+.2g}%"


def _scaled(value: Any) -> Any:
    return None if value is None else value * 1e3


def ratios(runs: List[Dict[str, Any]], student: str = "student", teacher: str = "teacher_0") -> List[Dict[str, Any]]:
    """Student / teacher throughput and memory at each (atoms, ranks)."""
    out = []
    keyed = {(r["model"], r["atoms"], r["ranks"]): r for r in runs if r["ok"]}
    for (model, atoms, ranks), row in sorted(keyed.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        other = keyed.get((teacher, atoms, ranks))
        if model == student and other:
            out.append({"atoms": atoms, "ranks": ranks,
                        "speed": row["katom_step_per_s"] / other["katom_step_per_s"],
                        "memory": row["peak_rss_mb"] / other["peak_rss_mb"]})
    return out


def write(report: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1))
    atomic_write_text(out / "bench.md", markdown(report))
    plot(report, out / "bench.png")


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    keys = sorted({(r["model"], r["ranks"]) for r in report["runs"] if r["ok"]})
    for model, ranks in keys:
        rows = sorted((r for r in report["runs"] if r["ok"] and r["model"] == model and r["ranks"] == ranks),
                      key=lambda r: r["atoms"])
        label = f"{model} ({ranks} rank{'s' if ranks > 1 else ''})"
        speed_ax.plot([r["atoms"] for r in rows], [r["katom_step_per_s"] for r in rows], "o-", label=label)
        memory_ax.plot([r["atoms"] for r in rows], [r["peak_rss_mb"] for r in rows], "o-", label=label)
    for ax, title in ((speed_ax, "throughput (katom-step/s)"), (memory_ax, "peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    speed_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
