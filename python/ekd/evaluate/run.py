"""Evaluate trained models on a data file: errors, uncertainty calibration and a forces sign check.

This is the logic behind `python -m ekd.evaluate` (docs/evaluate.md). The parts live in
their own modules: `error_metrics` (1), `model_outputs` (2), `force_sign` (3); this module is (4).


1. **Metrics** — pure numpy functions on flat arrays (eV, eV/Å): energy errors per
   conformation and per atom, relative conformer energies within each molecule, force
   component errors, the angle between predicted and true force vectors, per-element force
   errors, and for ensembles the rank correlation and binned calibration of spread vs error.
2. **Models** — exported TorchScript files are run through the deployment contract
   (export/CONTRACT.md: one disjoint graph per batch, every atom a local node, forces from
   `edge_grad`), so what is evaluated is exactly what LAMMPS and ASE run; training checkpoints
   are run with `predict_all`. Every model yields the same `ModelOutput`.
3. **Sign check** — some published files store gradients under the name "forces". Along a
   trajectory (consecutive conformations a small step apart) the trapezoid rule gives
   E₂ − E₁ ≈ −½(F₁ + F₂)·(x₂ − x₁) for true forces; otherwise the models themselves are the
   witness: if every model's forces point against the file's, the file is what is wrong.
4. **Report** — report.json, report.md and PNG plots.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..data import AtomsData
from ..distill.labels import member_force_deviation
from ..errors import EkdError
from ..export import model_names
from ..fileio import atomic_write_text
from .error_metrics import (
    CALIBRATION_BINS,
    MIN_FORCE_FOR_ANGLE,
    error_stats,
    force_angles,
    force_cosine,
    per_element_force_errors,
    relative_energy_errors,
    relative_to_group_mean,
    uncertainty_metrics,
)
from .force_sign import (
    TRAJECTORY_STEP,
    SignCheck,
    check_sign_by_finite_differences,
    check_sign_by_models,
)
from .model_outputs import (
    ModelOutput,
    check_elements,
    ensemble_of,
    evaluate_model,
    open_model,
)

# ---- settings -----------------------------------------------------------------------------------



@dataclass
class EvaluationSettings:
    """Thresholds of the metrics and of the sign check (defaults: the module constants)."""

    min_force_for_angle: float = MIN_FORCE_FOR_ANGLE
    calibration_bins: int = CALIBRATION_BINS
    trajectory_step: float = TRAJECTORY_STEP


# ---- 4. the report -----------------------------------------------------------------------------------

def model_metrics(output: ModelOutput, data: AtomsData, settings: EvaluationSettings) -> Dict[str, Any]:
    """Every metric of one model (eV, eV/Å, degrees)."""
    n_atoms = data.n_atoms.astype(np.float64)
    out: Dict[str, Any] = {
        "path": output.path, "kind": output.kind, "members": output.members, "ok": output.error is None,
        "error": output.error, "seconds": round(output.seconds, 3),
    }
    if output.error is not None:
        return out
    out["energy"] = error_stats(output.energy, data.energy)
    out["energy_per_atom"] = error_stats(output.energy / n_atoms, data.energy / n_atoms)
    out["relative_energy"] = relative_energy_errors(output.energy, data.energy, data.group)
    has_forces = data.forces is not None and data.has_forces.any()
    if has_forces:
        forces = error_stats(output.forces, data.forces)
        angles = force_angles(output.forces, data.forces, settings.min_force_for_angle)
        forces["angle_mean_deg"] = float(angles.mean()) if angles.size else None
        forces["angle_count"] = int(angles.size)
        forces["cosine"] = force_cosine(output.forces, data.forces)
        out["forces"] = forces
        out["forces_by_element"] = per_element_force_errors(output.forces, data.forces, data.species)
    else:
        out["forces"] = None
        out["forces_by_element"] = {}
    if output.member_energy is not None:
        out["uncertainty"] = ensemble_uncertainty(output, data, settings)
    elif output.atom_uncertainty is not None:
        out["uncertainty"] = own_uncertainty(output, data, settings)
    return out


def own_uncertainty(output: ModelOutput, data: AtomsData, settings: EvaluationSettings) -> Dict[str, Any]:
    """A model's own per-atom uncertainty (a student's head) against its force error |F − F_true|."""
    result: Dict[str, Any] = {"energy": None, "forces": None}
    if data.forces is not None and data.has_forces.any():
        force_error = np.linalg.norm(output.forces - data.forces, axis=1)  # NaN where no true forces
        result["forces"] = uncertainty_metrics(output.atom_uncertainty, force_error, settings.calibration_bins)
    return result


def ensemble_uncertainty(output: ModelOutput, data: AtomsData, settings: EvaluationSettings) -> Dict[str, Any]:
    """Spread of the members (energy: std of member energies; forces: per atom, the RMS over
    members of |F_m − F_mean|, as the ASE calculator reports it) against the ensemble's error."""
    energy_spread = output.member_energy.std(axis=0)
    result = {"energy": uncertainty_metrics(energy_spread, output.energy - data.energy, settings.calibration_bins),
              "forces": None}
    if data.forces is not None and data.has_forces.any():
        force_spread = member_force_deviation(output.member_forces)
        force_error = np.linalg.norm(output.forces - data.forces, axis=1)  # NaN where no true forces
        result["forces"] = uncertainty_metrics(force_spread, force_error, settings.calibration_bins)
    return result


def _plots(outputs: List[ModelOutput], data: AtomsData, report: Dict[str, Any], out_dir: Path) -> Dict[str, str]:
    ok = [o for o in outputs if o.error is None]
    paths: Dict[str, str] = {}
    if not ok:
        return paths
    reference = relative_to_group_mean(data.energy, data.group)
    paths["energy_parity"] = _parity_figure(
        [(o.name, reference, relative_to_group_mean(o.energy, data.group)) for o in ok], "eV",
        "energies relative to each molecule's mean", out_dir / "energy_parity.png")
    if data.forces is not None and data.has_forces.any():
        paths["force_parity"] = _parity_figure(
            [(o.name, data.forces.ravel(), o.forces.ravel()) for o in ok], "eV/Å", "force components",
            out_dir / "force_parity.png")
    ensembles = [o for o in ok if o.member_energy is not None]
    if ensembles:
        paths["calibration"] = str(_calibration_plot(ensembles, report, out_dir / "calibration.png"))
    return paths


def _parity_figure(panels: list, unit: str, title: str, path: Path) -> str:
    """One parity panel (name, reference, predicted) per model, saved as a PNG."""
    from .plots import axes_grid, parity_panel  # matplotlib only when plotting

    plt, fig, axes = axes_grid(len(panels))
    for ax, (name, reference, predicted) in zip(axes, panels):
        parity_panel(ax, reference, predicted, name, unit)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _calibration_plot(ensembles: List[ModelOutput], report: Dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.5))
    for ax, key, unit in zip(axes, ("energy", "forces"), ("eV", "eV/Å")):
        top = 0.0
        for o in ensembles:
            u = report["models"][o.name]["uncertainty"][key]
            if not u or not u["bins"]:
                continue
            x = [b["rms_spread"] for b in u["bins"]]
            y = [b["rmse"] for b in u["bins"]]
            rho = "n/a" if u["spearman"] is None else f"{u['spearman']:.2f}"
            ax.plot(x, y, "o-", ms=4, label=f"{o.name} (ρ = {rho})")
            top = max(top, max(x), max(y))
        if top > 0:
            # Log axes: spreads of a poorly calibrated ensemble can be orders of magnitude below its errors.
            low = min(min(b["rms_spread"], b["rmse"]) for o in ensembles if report["models"][o.name]["uncertainty"][key]
                      for b in report["models"][o.name]["uncertainty"][key]["bins"])
            low = low if low > 0 else top * 1e-3
            ax.plot([low, top], [low, top], color="k", lw=0.8, ls="--", label="calibrated")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_title(f"{key}: error vs ensemble spread", fontsize=9)
        ax.set_xlabel(f"RMS spread in bin ({unit})", fontsize=8)
        ax.set_ylabel(f"RMSE in bin ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _milli(value: Optional[float]) -> str:
    return "—" if value is None else f"{value * 1e3:.2f}"


def _number(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_report(report: Dict[str, Any]) -> str:
    """report.json as tables (meV, meV/Å, degrees)."""
    d = report["data"]
    lines = [f"# Evaluation on {d['source']}", "",
             f"{d['conformations']} conformations ({d['conformations_with_forces']} with forces), "
             f"{d['molecules']} molecules, elements {' '.join(d['elements'])}.", "",
             f"Forces sign check: {report['sign_check']['method']}: {report['sign_check']['verdict']}.", "",
             "Energies in meV (per conformation, per atom, and relative to each molecule's mean), "
             "force components in meV/Å, angles between predicted and true forces in degrees.", "",
             "| model | E MAE | E RMSE | E/atom MAE | E/atom RMSE | rel. E MAE | rel. E RMSE | F MAE | F RMSE | "
             "F angle |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    failed = []
    for name, m in report["models"].items():
        if not m["ok"]:
            failed.append(m["error"])
            lines.append(f"| {name} | failed | | | | | | | | |")
            continue
        f = m["forces"] or {}
        lines.append(f"| {name} | {_milli(m['energy']['mae'])} | {_milli(m['energy']['rmse'])} | "
                     f"{_milli(m['energy_per_atom']['mae'])} | {_milli(m['energy_per_atom']['rmse'])} | "
                     f"{_milli(m['relative_energy']['mae'])} | {_milli(m['relative_energy']['rmse'])} | "
                     f"{_milli(f.get('mae'))} | {_milli(f.get('rmse'))} | {_number(f.get('angle_mean_deg'), 1)} |")
    elements = sorted({e for m in report["models"].values() if m["ok"] for e in m["forces_by_element"]})
    if elements:
        lines += ["", "Force component MAE / RMSE per element (meV/Å):", "",
                  "| model | " + " | ".join(elements) + " |", "|---|" + "---:|" * len(elements)]
        for name, m in report["models"].items():
            if m["ok"]:
                cells = [f"{_milli(m['forces_by_element'][e]['mae'])} / {_milli(m['forces_by_element'][e]['rmse'])}"
                         if e in m["forces_by_element"] else "—" for e in elements]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, m in report["models"].items():
        if not m["ok"] or "uncertainty" not in m:
            continue
        title = (f"Ensemble {name} ({m['members']} members): spread vs error" if m["members"] > 1
                 else f"Model {name}: its own uncertainty vs error")
        lines += ["", f"## {title}", ""]
        for key, unit in (("energy", "meV"), ("forces", "meV/Å")):
            u = m["uncertainty"][key]
            if not u:
                continue
            lines += [f"{key}: Spearman ρ(spread, |error|) = {_number(u['spearman'])}, RMSE / RMS spread = "
                      f"{_number(u['rmse_over_rms_spread'])}, ROC AUC of flagging the worst 10 % = "
                      f"{_number(u['auc_worst_10pct'])} over {u['count']} "
                      f"{'conformations' if key == 'energy' else 'atoms'}", "",
                      f"| spread range ({unit}) | RMS spread | RMSE | MAE | count |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {_milli(b['spread_min'])}–{_milli(b['spread_max'])} | {_milli(b['rms_spread'])} | "
                      f"{_milli(b['rmse'])} | {_milli(b['mae'])} | {b['count']} |" for b in u["bins"]]
            lines.append("")
    if failed:
        lines += ["", "## Failed models", ""] + [f"- {e}" for e in failed]
    return "\n".join(lines).rstrip() + "\n"


def _jsonable(value: Any) -> Any:
    """NaN / inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_report(outputs: List[ModelOutput], data: AtomsData, sign: SignCheck,
                 settings: EvaluationSettings) -> Dict[str, Any]:
    from ase.data import chemical_symbols

    return _jsonable({
        "units": {"energy": "eV", "forces": "eV/Angstrom", "angle": "degree"},
        "data": {"source": data.source, "conformations": len(data), "atoms": data.n_total_atoms,
                 "molecules": int(len(np.unique(data.group))),
                 "conformations_with_forces": int(data.has_forces.sum()),
                 "elements": [chemical_symbols[z] for z in data.elements]},
        "settings": {"min_force_for_angle": settings.min_force_for_angle,
                     "calibration_bins": settings.calibration_bins, "trajectory_step": settings.trajectory_step},
        "sign_check": {"method": sign.method, "pairs": sign.pairs, "slope": sign.slope,
                       "cosines": sign.cosines, "verdict": sign.verdict},
        "models": {o.name: model_metrics(o, data, settings) for o in outputs},
    })


def write_report(outputs: List[ModelOutput], data: AtomsData, sign: SignCheck, out_dir: Path,
                 settings: EvaluationSettings | None = None) -> Dict[str, Any]:
    """report.json, report.md and the plots in `out_dir`; returns the report."""
    settings = settings or EvaluationSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(outputs, data, sign, settings)
    report["plots"] = _plots(outputs, data, report, out_dir)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "report.md", markdown_report(report))
    return report


# ---- the whole evaluation -----------------------------------------------------------------------------

@dataclass
class EvaluationRequest:
    """Everything `python -m ekd.evaluate` was asked (see docs/evaluate.md)."""

    models: List[Path]
    data: Any                 # ekd.data.DataSpec
    out: Path = Path("evaluation")
    batch_size: int = 64
    ensemble: bool = False
    max_conformations: int = 0
    settings: EvaluationSettings = field(default_factory=EvaluationSettings)


def subset_for_speed(data: AtomsData, limit: int, seed: int = 0) -> tuple[AtomsData, np.ndarray]:
    """A sorted random subset of at most `limit` conformations (0: all), and their indices."""
    if limit <= 0 or limit >= len(data):
        return data, np.arange(len(data))
    ids = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    return data.subset(ids), ids


def run_evaluation(request: EvaluationRequest, say=print) -> Dict[str, Any]:
    """Read, check, evaluate and report. Bad input raises `EkdError` before anything is
    written; a model that fails is reported in the report instead."""
    from ..data import describe, read_data

    if not request.models:
        raise EkdError("no model given")
    if request.batch_size < 1:
        raise EkdError(f"--batch-size must be at least 1, got {request.batch_size}")
    data = read_data(request.data)
    say(describe(data))
    sign = SignCheck()
    if data.forces is not None and data.has_forces.any():
        sign = check_sign_by_finite_differences(data, request.data.forces_sign, request.settings.trajectory_step)
    models = [open_model(p, n) for p, n in zip(request.models, model_names(request.models))]
    for model in models:
        check_elements(model, data)
    data, original = subset_for_speed(data, request.max_conformations)
    outputs = []
    for model in models:
        output = evaluate_model(model, data, request.batch_size, original)
        status = output.error or f"{len(data)} conformations in {output.seconds:.1f} s"
        say(f"{model.name}: {'exported' if model.exported else 'checkpoint'} {model.kind}"
            f"{f' ({model.members} members)' if model.members > 1 else ''}: {status}")
        outputs.append(output)
    if request.ensemble:
        if len(outputs) < 2:
            raise EkdError("--ensemble needs at least two models (its members)")
        name = "ensemble" if "ensemble" not in {o.name for o in outputs} else "ensemble_of_models"
        outputs.append(ensemble_of(outputs, name))
    sign = check_sign_by_models(sign, outputs, data, request.data.forces_sign)
    return write_report(outputs, data, sign, request.out, request.settings)
