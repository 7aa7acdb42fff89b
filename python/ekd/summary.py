"""The run summary: every trained model's errors on every split, as JSON, Markdown and plots.

summary.json:
    units:     {"energy": "eV", "forces": "eV/Angstrom"}
    models:    {name: {split: {energy_mae, energy_rmse, energy_mae_per_atom, energy_rmse_per_atom,
                               force_mae, force_rmse, conformations, conformations_with_forces}}}
               for teacher_0 … teacher_{N-1}, ensemble, baseline, student (those trained so far);
               force errors are null where the data have no true forces.
    training:  {name: {epochs, best_epoch, stop_reason, seconds, conformations_per_second, parameters}}
    distillation: student / baseline ratios of the test-split errors
    uncertainty: {name: {split: {spearman, rmse_over_rms_spread, auc_worst_10pct, count, bins, ...}}}
               for the ensemble (its members' force deviation) and a student with an uncertainty
               head, on the splits with true forces: how the per-atom uncertainty ranks and sizes
               the true force error (ekd.evaluate.error_metrics.uncertainty_metrics)
    data:      source and split sizes
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from .data import GraphData
from .fileio import atomic_write_text
from .evaluate import mean_prediction, parity_plots, split_metrics, uncertainty_calibration
from .models import count_parameters, load_model
from .run_directory import RunDirectory
from .run_layout import BASELINE, STUDENT, teacher_name
from .training import Predictions, predict_all, read_checkpoint


def trained_models(run: RunDirectory) -> Dict[str, Path]:
    """Finished checkpoints of the run, by model name, in summary order."""
    found: Dict[str, Path] = {}
    names = [teacher_name(k) for k in run.config.teachers.indices()] + [BASELINE, STUDENT]
    for name in names:
        path = run.checkpoint(name)
        if path.exists() and read_checkpoint(path).get("finished"):
            found[name] = path
    return found


def _training_info(path: Path) -> Dict[str, Any]:
    state = read_checkpoint(path)
    history = state.get("history", [])
    rates = [row["conformations_per_s"] for row in history]
    return {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "stop_reason": state["stop_reason"],
            "seconds": round(state["elapsed"], 1),
            "conformations_per_second": round(sorted(rates)[len(rates) // 2], 1) if rates else None}


def run_predictions(run: RunDirectory, checkpoints: Dict[str, Path], graph_for: Callable[[float], GraphData],
                    splits: Dict[str, np.ndarray]) -> tuple[Dict[str, Dict[str, Predictions]], Dict[str, int]]:
    """predictions[model][split] of every checkpoint on the conformations `splits` of the graph
    `graph_for(cutoff)` gives, the teachers' ensemble mean inserted after them once every teacher
    of the run is trained; and each model's parameter count."""
    out: Dict[str, Dict[str, Predictions]] = {}
    parameters: Dict[str, int] = {}
    for name, path in checkpoints.items():
        model = load_model(path).to(run.config.run.device)
        parameters[name] = count_parameters(model)
        graph = graph_for(model.cutoff)
        out[name] = {split: predict_all(model, graph, ids) for split, ids in splits.items() if len(ids)}
    teachers = [n for n in out if n.startswith("teacher_")]
    ordered: Dict[str, Dict[str, Predictions]] = {n: out[n] for n in teachers}
    if teachers and len(teachers) == len(run.config.teachers.indices()):
        ordered["ensemble"] = {s: mean_prediction([out[t][s] for t in teachers]) for s in out[teachers[0]]}
    ordered.update({n: out[n] for n in out if n not in teachers})
    return ordered, parameters


def _ratio(models: Dict[str, Any], key: str) -> Optional[float]:
    try:
        student, baseline = models["student"]["test"][key], models["baseline"]["test"][key]
    except KeyError:
        return None
    return None if student is None or not baseline else student / baseline


def write_summary(run: RunDirectory) -> str:
    """Evaluate every finished model, write summary.json / summary.md / plots; return the table."""
    checkpoints = trained_models(run)
    predictions, parameters = run_predictions(run, checkpoints, run.graph, run.split)
    models = {name: {split: split_metrics(p, run.data) for split, p in by_split.items()}
              for name, by_split in predictions.items()}
    training = {name: {**_training_info(path), "parameters": parameters[name]}
                for name, path in checkpoints.items()}
    plots_dir = run.plots_dir
    plot_paths = {}
    for split in ("test", "val"):
        if predictions and split in next(iter(predictions.values())):
            plot_paths[split] = {k: str(v) if v else None for k, v in parity_plots(
                {n: p[split] for n, p in predictions.items()}, run.data, plots_dir, split).items()}
    summary = {
        "units": {"energy": "eV", "forces": "eV/Angstrom"},
        "data": {"source": run.data.source, **{f"{k}_conformations": int(len(v)) for k, v in run.split.items()}},
        "models": models,
        "training": training,
        "distillation": {"student_over_baseline_force_rmse_test": _ratio(models, "force_rmse"),
                         "student_over_baseline_energy_rmse_test": _ratio(models, "energy_rmse")},
        "plots": plot_paths,
        "uncertainty": _uncertainty(predictions, run),
    }
    atomic_write_text(run.summary_json, json.dumps(summary, indent=1))
    table = markdown_table(summary)
    atomic_write_text(run.summary_md, table)
    return table


def _uncertainty(predictions: Dict[str, Dict[str, Predictions]], run: RunDirectory) -> Dict[str, Any]:
    """Calibration of every per-atom uncertainty against the true force errors, per split."""
    out: Dict[str, Any] = {}
    for name, by_split in predictions.items():
        for split in ("val", "test"):
            if split in by_split:
                calibration = uncertainty_calibration(by_split[split], run.data)
                if calibration is not None:
                    out.setdefault(name, {})[split] = calibration
    return out


def _fmt(value: Optional[float], scale: float) -> str:
    return "—" if value is None else f"{value * scale:.2f}"


def markdown_table(summary: Dict[str, Any]) -> str:
    """Errors in meV and meV/Å, validation and test splits, plus training facts."""
    lines = [f"# Run summary: {summary['data']['source']}", "",
             "Errors against the reference data (energies in meV per conformation and per atom, "
             "forces in meV/Å; — where the data have no true forces).", ""]
    header = ("| model | split | E MAE | E RMSE | E RMSE/atom | F MAE | F RMSE |")
    lines += [header, "|---|---|---:|---:|---:|---:|---:|"]
    for name, by_split in summary["models"].items():
        for split in ("val", "test"):
            if split not in by_split:
                continue
            m = by_split[split]
            lines.append(f"| {name} | {split} | {_fmt(m['energy_mae'], 1e3)} | {_fmt(m['energy_rmse'], 1e3)} | "
                         f"{_fmt(m['energy_rmse_per_atom'], 1e3)} | {_fmt(m['force_mae'], 1e3)} | "
                         f"{_fmt(m['force_rmse'], 1e3)} |")
    ratios = summary["distillation"]
    if ratios["student_over_baseline_energy_rmse_test"] is not None:
        lines += ["", "Student / energy-only baseline on the test split: energy RMSE "
                  f"{ratios['student_over_baseline_energy_rmse_test']:.3f}"
                  + (f", force RMSE {ratios['student_over_baseline_force_rmse_test']:.3f}"
                     if ratios["student_over_baseline_force_rmse_test"] is not None else "")]
    if summary.get("uncertainty"):
        lines += ["", "Per-atom uncertainty (ensemble: its members' force deviation; student: its own head) "
                  "against the true force error |F − F_true|: Spearman ρ, RMS error / RMS uncertainty "
                  "(1 = calibrated), ROC AUC of flagging the 10 % of atoms with the largest error.", "",
                  "| model | split | ρ | RMS error / RMS u | AUC worst 10 % | atoms |", "|---|---|---:|---:|---:|---:|"]
        for name, by_split in summary["uncertainty"].items():
            for split, u in by_split.items():
                lines.append(f"| {name} | {split} | {_fmt(u['spearman'], 1)} | {_fmt(u['rmse_over_rms_spread'], 1)} | "
                             f"{_fmt(u['auc_worst_10pct'], 1)} | {u['count']} |")
    lines += ["", "| model | parameters | epochs | best epoch | train time (s) | conformations/s | stopped because |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, t in summary["training"].items():
        lines.append(f"| {name} | {t['parameters']:,} | {t['epochs']} | {t['best_epoch']} | {t['seconds']} | "
                     f"{t['conformations_per_second']} | {t['stop_reason']} |")
    return "\n".join(lines) + "\n"
