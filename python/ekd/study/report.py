"""A study's report: every model's test errors, and every per-atom uncertainty's calibration
against the true force errors, as mean ± sample SD over the seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..run_layout import RunLayout
from .plan import METRICS, Task

# What the summary says of each per-atom uncertainty on the test split (summary.json "uncertainty").
UNCERTAINTY_METRICS = ("spearman", "rmse_over_rms_spread", "auc_worst_10pct")


def mean_spread(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    array = np.asarray(values, dtype=float)
    spread = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": spread, "n": int(len(array)), "values": [float(v) for v in array]}


def collect(tasks: Sequence[Task], out: Path) -> Dict[str, Any]:
    """Per (variant, model) the test metrics over the seeds that finished; per variant the ratios."""
    rows: Dict[str, Dict[str, List[float]]] = {}
    parameters: Dict[str, int] = {}
    seeds: Dict[str, List[int]] = {}
    baselines = _main_baselines(tasks, out)
    for task in tasks:
        path = RunLayout(out / task.name).summary_json
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        models = summary["models"]
        for model, splits in models.items():
            if task.variant and model not in ("student", "baseline", "ensemble"):
                continue  # a variant's teachers are its seed's, already counted
            if task.variant and model == "ensemble" and not task.config.teachers.subset:
                continue  # so is its ensemble, unless it uses a subset of them
            label = f"{model} ({task.variant})" if task.variant else model
            test = splits.get("test") or {}
            for metric in METRICS:
                if test.get(metric) is not None:
                    rows.setdefault(label, {}).setdefault(metric, []).append(test[metric])
            parameters[label] = summary["training"].get(model, {}).get("parameters", 0)
            seeds.setdefault(label, []).append(task.seed)
        # a variant without a baseline of its own (baseline.enabled = false) is compared with its seed's
        baseline_model = models.get("baseline") or baselines.get(task.seed)
        if "student" in models and baseline_model is not None:
            label = f"student / baseline ({task.variant})" if task.variant else "student / baseline"
            for metric in ("energy_rmse", "force_rmse"):
                student, baseline = models["student"]["test"].get(metric), baseline_model["test"].get(metric)
                if student is not None and baseline:
                    rows.setdefault(label, {}).setdefault(metric, []).append(student / baseline)
            seeds.setdefault(label, []).append(task.seed)
    return {"models": {label: {m: mean_spread(v) for m, v in metrics.items()} for label, metrics in rows.items()},
            "parameters": parameters, "seeds": seeds, "uncertainty": collect_uncertainty(tasks, out)}


def _main_baselines(tasks: Sequence[Task], out: Path) -> Dict[int, Any]:
    """Per seed, the main run's baseline (a variant with `baseline.enabled = false` is compared
    with it: same architecture, data and seed)."""
    found: Dict[int, Any] = {}
    for task in tasks:
        path = RunLayout(out / task.name).summary_json
        if not task.variant and path.exists():
            baseline = json.loads(path.read_text())["models"].get("baseline")
            if baseline is not None:
                found[task.seed] = baseline
    return found


def collect_uncertainty(tasks: Sequence[Task], out: Path) -> Dict[str, Any]:
    """Per (variant, model) with a per-atom uncertainty, its test calibration over the seeds, and
    per seed the student's Spearman ρ over the ensemble's (the distilled uncertainty's target)."""
    rows: Dict[str, Dict[str, List[float]]] = {}
    for task in tasks:
        path = RunLayout(out / task.name).summary_json
        if not path.exists():
            continue
        found = json.loads(path.read_text()).get("uncertainty", {})
        for model, splits in found.items():
            if task.variant and model != "student" and not (model == "ensemble" and task.config.teachers.subset):
                continue
            label = f"{model} ({task.variant})" if task.variant else model
            for metric in UNCERTAINTY_METRICS:
                if (splits.get("test") or {}).get(metric) is not None:
                    rows.setdefault(label, {}).setdefault(metric, []).append(splits["test"][metric])
        student = (found.get("student") or {}).get("test") or {}
        ensemble = (found.get("ensemble") or {}).get("test") or {}
        if student.get("spearman") is not None and ensemble.get("spearman"):
            label = f"student ρ / ensemble ρ ({task.variant})" if task.variant else "student ρ / ensemble ρ"
            rows.setdefault(label, {}).setdefault("spearman", []).append(student["spearman"] / ensemble["spearman"])
    return {label: {m: mean_spread(v) for m, v in metrics.items()} for label, metrics in rows.items()}


def markdown(report: Dict[str, Any], command: str) -> str:
    """The study's table: errors in meV and meV/Å, ratios as numbers; mean ± SD (seeds)."""
    def cell(stats: Optional[Dict[str, Any]], scale: float, digits: int) -> str:
        if stats is None:
            return "—"
        return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"

    lines = [f"Command: `{command}`", "",
             "Test split, mean ± sample standard deviation over independent pipeline seeds (n = seeds).", "",
             "| model | n | parameters | E MAE (meV) | E RMSE (meV) | E RMSE/atom (meV) | F MAE (meV/Å) | "
             "F RMSE (meV/Å) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for label, metrics in report["models"].items():
        n = max(s["n"] for s in metrics.values())
        if label.startswith("student / baseline"):
            ratios.append(f"| {label} | {n} | {cell(metrics.get('energy_rmse'), 1, 3)} | "
                          f"{cell(metrics.get('force_rmse'), 1, 3)} |")
            continue
        cells = [cell(metrics.get(m), 1000, 1) for m in METRICS]
        count = report["parameters"].get(label, 0)
        lines.append(f"| {label} | {n} | {f'{count:,}' if count else '—'} | " + " | ".join(cells) + " |")
    if ratios:
        lines += ["", "| ratio | n | E RMSE | F RMSE |", "|---|---:|---:|---:|", *ratios]
    if report.get("uncertainty"):
        lines += ["", "Per-atom uncertainty against the true force error |F − F_true| on the test split: Spearman ρ, "
                  "RMS error / RMS uncertainty (1: calibrated), ROC AUC of flagging the worst 10 % of atoms.", "",
                  "| uncertainty | n | ρ | RMS error / RMS u | AUC worst 10 % |", "|---|---:|---:|---:|---:|"]
        for label, metrics in report["uncertainty"].items():
            n = max(s["n"] for s in metrics.values())
            lines.append(f"| {label} | {n} | " + " | ".join(cell(metrics.get(m), 1, 2) for m in UNCERTAINTY_METRICS)
                         + " |")
    return "\n".join(lines) + "\n"
