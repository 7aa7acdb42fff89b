"""Survival of a model's trajectories (Kaplan–Meier: S ← S × (1 − failures at t / trajectories
still running at t), censored trajectories running up to their censoring time) and the study's
report: stability.json, stability.md and survival.png."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..fileio import atomic_write_text
from .trajectories import UNCERTAINTY_WINDOW_FS, TrajectoryResult


def kaplan_meier(times: Sequence[float], failed: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival: (t, S) with S[k] the probability of surviving past t[k]; t starts
    at 0 with S = 1 and has one entry per distinct failure time. Censored trajectories
    (failed = False) count as at risk up to their time."""
    times = np.asarray(times, dtype=np.float64)
    failed = np.asarray(failed, dtype=bool)
    t_out, s_out, survival = [0.0], [1.0], 1.0
    for t in np.unique(times[failed]):
        at_risk = int(np.sum(times >= t))
        deaths = int(np.sum((times == t) & failed))
        survival *= 1.0 - deaths / at_risk
        t_out.append(float(t))
        s_out.append(survival)
    return np.asarray(t_out), np.asarray(s_out)


def median_survival(times: Sequence[float], failed: Sequence[bool]) -> Optional[float]:
    """The first time the Kaplan–Meier survival falls to 0.5 or below (None: it never does
    within the run, the median is longer than the run)."""
    t, s = kaplan_meier(times, failed)
    below = np.flatnonzero(s <= 0.5)
    return float(t[below[0]]) if below.size else None


def summarize(results: List[TrajectoryResult], length_ps: float) -> Dict[str, Any]:
    """Fraction survived and Kaplan–Meier median time to failure, overall and per molecule."""
    def block(rows: List[TrajectoryResult]) -> Dict[str, Any]:
        times = [r.time_ps for r in rows]
        failed = [not r.survived for r in rows]
        return {"trajectories": len(rows), "survived": int(sum(r.survived for r in rows)),
                "fraction_survived": float(np.mean([r.survived for r in rows])) if rows else None,
                "median_time_to_failure_ps": median_survival(times, failed)}

    out = block(results)
    out["per_molecule"] = {name: block([r for r in results if r.molecule == name])
                           for name in dict.fromkeys(r.molecule for r in results)}
    out["run_length_ps"] = length_ps
    return out


def summary_with_detail(rows: List[TrajectoryResult], length_ps: float) -> Dict[str, Any]:
    """`summarize`, the uncertainty's warning (when traced) and every trajectory's own row."""
    out = {**summarize(rows, length_ps), "trajectories_detail": [asdict(r) for r in rows]}
    warning = uncertainty_warning(rows)
    if warning:
        out["uncertainty_warning"] = warning
    return out


def uncertainty_warning(rows: List[TrajectoryResult], window_fs: float = UNCERTAINTY_WINDOW_FS) -> Dict[str, Any]:
    """Does the model's own uncertainty rise before its trajectories fail? Per trajectory the
    largest uncertainty before the failure (or over the whole run); AUC: the chance that a failed
    trajectory's exceeds a surviving one's (0.5: no warning). At two thresholds — the largest
    any surviving trajectory reached (no false alarm here) and the 95th percentile of theirs —
    how many failures crossed it first, and how long (ps) before they failed."""
    traced = [r for r in rows if r.uncertainty]
    survived = np.array([max(r.uncertainty) for r in traced if r.survived])
    failed = [r for r in traced if not r.survived]
    if not len(survived) or not failed:
        return {}
    peaks = np.array([max(r.uncertainty) for r in failed])
    auc = float(np.mean([(p > survived).mean() + 0.5 * (p == survived).mean() for p in peaks]))
    out: Dict[str, Any] = {"trajectories": len(traced), "failed": len(failed), "auc": auc,
                           "window_fs": window_fs, "thresholds": []}
    for label, threshold in (("largest of the surviving", float(survived.max())),
                             ("95th percentile of the surviving", float(np.percentile(survived, 95)))):
        leads = [r.time_ps - first * window_fs / 1000.0 for r in failed
                 for first in [next((k for k, u in enumerate(r.uncertainty) if u > threshold), None)]
                 if first is not None]
        out["thresholds"].append({"label": label, "eV_per_A": threshold, "failures_flagged": len(leads),
                                  "median_lead_ps": float(np.median(leads)) if leads else None})
    return out


def write_report(report: Dict[str, Any], results: Dict[str, List[TrajectoryResult]], length_ps: float, out: Path,
                 boxes: Dict[str, List[TrajectoryResult]]) -> None:
    """survival.png (its path goes into the report), stability.json and stability.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(survival_plot(results, length_ps, out / "survival.png", boxes))
    atomic_write_text(out / "stability.json", json.dumps(report, indent=1))
    atomic_write_text(out / "stability.md", markdown(report))


def survival_plot(results: Dict[str, List[TrajectoryResult]], length_ps: float, path: Path,
                  boxes: Optional[Dict[str, List[TrajectoryResult]]] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.5))
    for name, rows in results.items():
        line = _survival_steps(ax, rows, length_ps, label=f"{name} ({len(rows)} runs)")
        if boxes and name in boxes:
            _survival_steps(ax, boxes[name], length_ps, ls="--", color=line[0].get_color(),
                            label=f"{name}, LAMMPS box ({len(boxes[name])} runs)")
    ax.set_xlim(0, length_ps)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of trajectories intact")
    ax.set_title("Kaplan–Meier survival", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _survival_steps(ax: Any, rows: List[TrajectoryResult], length_ps: float, **style: Any) -> Any:
    """S(t) of the rows as steps on `ax`, drawn on to the run length."""
    t, s = kaplan_meier([r.time_ps for r in rows], [not r.survived for r in rows])
    return ax.step(np.append(t, length_ps), np.append(s, s[-1]), where="post", **style)


def _median(value: Optional[float], length: float) -> str:
    return f"> {length:g}" if value is None else f"{value:.4g}"


def markdown(report: Dict[str, Any]) -> str:
    s, c = report["settings"], report["criterion"]
    length = s["run_length_ps"]
    lines = [f"# MD stability{' on ' + report['source'] if report['source'] else ''}", "",
             f"Langevin NVT at {s['temperature']:g} K, {s['steps']} steps of {s['timestep']:g} fs "
             f"({length:g} ps), friction {s['friction']:g} /fs, {s['seeds']} seeds per molecule. A trajectory fails "
             f"at the first step with a non-finite energy, an energy change above {c['energy_jump']:g} eV/atom, a "
             f"bond (closer than {c['bond_factor']:g} x the covalent radii at the start) stretched beyond "
             f"{c['stretch_factor']:g} x its initial length, or an atom more than {c['isolation']:g} Å from all "
             "others. Median: Kaplan–Meier median time to failure (ps).", "",
             "| model | survived | fraction | median time to failure (ps) |", "|---|---:|---:|---:|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['survived']}/{m['trajectories']} | {m['fraction_survived']:.2f} | "
                     f"{_median(m['median_time_to_failure_ps'], length)} |")
    molecules = report["molecules"]
    lines += ["", "Per molecule: survived / trajectories (median time to failure, ps):", "",
              "| model | " + " | ".join(molecules) + " |", "|---|" + "---:|" * len(molecules)]
    for name, m in report["models"].items():
        cells = [f"{m['per_molecule'][mol]['survived']}/{m['per_molecule'][mol]['trajectories']} "
                 f"({_median(m['per_molecule'][mol]['median_time_to_failure_ps'], length)})" for mol in molecules]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "lammps_box" in report:
        lines += ["", f"Periodic box in LAMMPS ({report['lammps_box']['density']:g} g/cm³, positions checked every "
                      f"{report['lammps_box']['dump_every']} steps, energies every step):", "",
                  "| model | box | survived | median time to failure (ps) |", "|---|---|---:|---:|"]
        for name, m in report["models"].items():
            b = m["lammps_box"]
            lines.append(f"| {name} | {b['trajectories_detail'][0]['molecule']} | {b['survived']}/{b['trajectories']} | "
                         f"{_median(b['median_time_to_failure_ps'], length)} |")
    warned = {name: m["uncertainty_warning"] for name, m in report["models"].items() if "uncertainty_warning" in m}
    if warned:
        lines += ["", "Does the model's own per-atom uncertainty rise before a failure? AUC: chance that a failed "
                      "trajectory's largest uncertainty before failing exceeds a surviving trajectory's (0.5: no "
                      "warning); flagged: failures that crossed the threshold first, and the median time from the "
                      "first crossing (within a window) to the failure.", "",
                  "| model | failed / traced | AUC | threshold (eV/Å) | flagged | median lead (ps) |",
                  "|---|---:|---:|---|---:|---:|"]
        for name, w in warned.items():
            for t in w["thresholds"]:
                lead = "—" if t["median_lead_ps"] is None else f"{t['median_lead_ps']:.3f}"
                lines.append(f"| {name} | {w['failed']}/{w['trajectories']} | {w['auc']:.2f} | {t['eV_per_A']:.3g} "
                             f"({t['label']}) | {t['failures_flagged']}/{w['failed']} | {lead} |")
    failures = [(name, r) for name, m in report["models"].items()
                for r in m["trajectories_detail"] + m.get("lammps_box", {}).get("trajectories_detail", [])
                if not r["survived"]]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {name}, {r['molecule']}, seed {r['seed']}: {r['time_ps']:.4f} ps, {r['reason']}"
                  for name, r in failures]
    return "\n".join(lines) + "\n"
