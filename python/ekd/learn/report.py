"""The active-learning report: one row per round in learn.json, learn.md and learn.png.

Per round: data size and additions, oracle calls, failures and time, test errors on the
original test split (from the round's summary.json) and on the MD frames held out so far
(`ekd.learn.md_test`), and the survival of the student's and the
baseline's sampling MD (the same starts every round) with the teachers' committee deviation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..fileio import atomic_write_text
from ..run_directory import RunDirectory

MODELS = ("ensemble", "student", "baseline")


def round_report(k: int, run: RunDirectory, grown: Dict[str, Any], sampled: Dict[str, Any],
                 md_test: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    summary = json.loads(run.summary_json.read_text())
    test = {name: {key: summary["models"][name]["test"].get(key) for key in ("energy_rmse", "force_rmse")}
            for name in MODELS if name in summary["models"] and "test" in summary["models"][name]}
    molecules = sampled.get("molecule", {})
    row = {"round": k, "conformations": len(run.data), "training": len(run.split["train"]),
           "oracle": grown, "test": test, "md_test": md_test, "sampling": sampled, "seconds": round(seconds, 1)}
    row["headline"] = (f"{len(run.data)} conformations; student F RMSE "
                       f"{_milli(test.get('student', {}).get('force_rmse'))} meV/Å; student MD survived "
                       f"{molecules.get('student_survived', '-')}/{molecules.get('trajectories', '-')} molecules")
    return row


def _milli(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def _survival(block: Dict[str, Any], model: str) -> str:
    if not block or block.get(f"{model}_survived") is None:
        return "-"
    return f"{block[f'{model}_survived']}/{block['trajectories']}"


def _md_test(block: Dict[str, Any]) -> str:
    if not block:
        return "- | -"
    return f"{block['frames']} | " + " / ".join(_milli(block.get(m, {}).get("force_rmse"))
                                               for m in ("student", "baseline", "ensemble"))


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["# Active learning", "",
             "Test errors on the original test split (meV, meV/Å); MD test: force RMSE (meV/Å) on the labelled MD "
             "frames held out of training so far (student / baseline / ensemble); survival: sampling MD trajectories "
             "that kept every bond (docs/learn.md), the same starts every round.", "",
             "| round | conformations | added | oracle calls (failed, too high) | oracle s | E RMSE student | F RMSE ensemble | "
             "F RMSE student | F RMSE baseline | MD test frames | MD test F RMSE | molecules student | molecules baseline | "
             "clusters student | clusters baseline | boxes student | boxes baseline | frames in window |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        oracle, test, s = row["oracle"], row["test"], row["sampling"]
        grown = (f"{oracle['added']} | {oracle['calls']} ({oracle['failed']}, {oracle['too_high']}) | "
                 f"{oracle['oracle_seconds']:.0f}"
                 if oracle else "- | - | -")
        lines.append(f"| {row['round']} | {row['conformations']} | {grown} | "
                     f"{_milli(test.get('student', {}).get('energy_rmse'))} | "
                     f"{_milli(test.get('ensemble', {}).get('force_rmse'))} | "
                     f"{_milli(test.get('student', {}).get('force_rmse'))} | "
                     f"{_milli(test.get('baseline', {}).get('force_rmse'))} | {_md_test(row.get('md_test', {}))} | "
                     f"{_survival(s.get('molecule', {}), 'student')} | {_survival(s.get('molecule', {}), 'baseline')} | "
                     f"{_survival(s.get('cluster', {}), 'student')} | {_survival(s.get('cluster', {}), 'baseline')} | "
                     f"{_survival(s.get('box', {}), 'student')} | {_survival(s.get('box', {}), 'baseline')} | "
                     f"{s['frames_in_window']}/{s['frames']} |")
    return "\n".join(lines) + "\n"


def write_learn_report(out: Path, rows: List[Dict[str, Any]]) -> None:
    atomic_write_text(out / "learn.json", json.dumps({"rounds": rows}, indent=1))
    atomic_write_text(out / "learn.md", markdown(rows))
    plot(out / "learn.png", rows)


def plot(path: Path, rows: List[Dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    fig, (errors, survival) = plt.subplots(1, 2, figsize=(9, 3.5))
    for model in MODELS:
        values = [row["test"].get(model, {}).get("force_rmse") for row in rows]
        if any(v is not None for v in values):
            errors.plot(rounds, [v * 1e3 if v is not None else float("nan") for v in values], "o-", label=model)
        held = [row.get("md_test", {}).get(model, {}).get("force_rmse") for row in rows]
        if any(v is not None for v in held):
            errors.plot(rounds, [v * 1e3 if v is not None else float("nan") for v in held], "x:",
                        label=f"{model}, MD test")
    errors.set(xlabel="round", ylabel="test force RMSE (meV/Å)", title="original test split and MD test frames")
    errors.legend()
    for kind in ("molecule", "cluster", "box"):
        for model, style in (("student", "o-"), ("baseline", "s--")):
            values = [row["sampling"].get(kind, {}) for row in rows]
            if all(v and v.get(f"{model}_survived") is not None for v in values):
                survival.plot(rounds, [v[f"{model}_survived"] / v["trajectories"] for v in values], style,
                              label=f"{model}, {kind}s")
    survival.set(xlabel="round", ylabel="surviving fraction", ylim=(0, 1.05), title="sampling MD")
    survival.legend()
    for ax in (errors, survival):
        ax.set_xticks(rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
