"""`python -m ekd.study [CONFIG] --out DIR [--seeds 3] [--set KEY=VALUE] [--variant NAME:KEY=VALUE;...]`:
the whole method over several independent pipeline seeds, as mean ± spread.

One result of one seed can be noise. A study runs `python -m ekd.train` once per seed (its
`[run] seed` set to base, base + step, ...; teachers, labels, student and baseline all new) and,
per seed and per variant, trains other students on that seed's teachers (`--teachers-from`).
A variant is a name and config overrides, e.g.
`--variant "atom energies:student.train.atom_energy_weight=0.1;baseline.enabled=false"`.
The test split is the config's own (its `[split] seed` is not changed), so every seed is
measured on the same conformations.

Writes DIR/seed_S (runs), DIR/seed_S-VARIANT, DIR/logs/*.log (each run's output) and
DIR/study.md + DIR/study.json: every model's test errors as mean ± sample standard deviation
over the seeds, and the per-seed student / baseline ratios. Interrupted? Run the same command
again: finished runs are kept, unfinished ones resume from their checkpoints.

Exit codes: 0 every run finished; 1 some run failed (the others and the report are kept; the
message names its log); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .config import DEFAULT_CONFIG, RunConfig, config_from_dict, config_to_toml, load_config
from .errors import ConfigError, EkdError
from .fileio import atomic_write_text

# Teacher k of a run with seed s has seed s + k and the student s + 1000; steps of 100 keep the
# teachers of different pipeline seeds apart (up to 100 teachers).
DEFAULT_SEED_STEP = 100
METRICS = ("energy_mae", "energy_rmse", "energy_rmse_per_atom", "force_mae", "force_rmse")


@dataclass
class Variant:
    """Another student trained on each seed's teachers: a name and dotted-key config overrides."""

    name: str
    overrides: Dict[str, Any]


@dataclass
class Task:
    """One `python -m ekd.train` run of the study."""

    name: str                       # e.g. "seed_100" or "seed_100-atom energies"
    config: RunConfig
    seed: int
    variant: str = ""               # "" for the main run of a seed
    after: Optional[str] = None     # the task whose teachers this one reuses
    state: str = "pending"          # pending | running | done | failed
    seconds: float = 0.0


# ---- configuration --------------------------------------------------------------------------------

def parse_variant(text: str) -> Variant:
    """"NAME:key.path=VALUE;key.path=VALUE" (VALUE in TOML syntax) → Variant."""
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in "/\\"):
        raise ConfigError(f"--variant {text!r}: expected NAME:KEY=VALUE;KEY=VALUE (a name without slashes)")
    overrides: Dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in body.split(";"))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--variant {name!r}: {item!r} is not KEY=VALUE")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"--variant {name!r}: the value of {key.strip()!r} is not TOML ({err})") from None
    return Variant(name, overrides)


def with_overrides(config: RunConfig, overrides: Dict[str, Any], where: str) -> RunConfig:
    """`config` with dotted keys replaced (e.g. student.model.n_features), checked like a TOML file."""
    raw = tomllib.loads(config_to_toml(config))
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        table = raw
        for key in path:
            if not isinstance(table.get(key), dict):
                raise ConfigError(f"{where}: {dotted!r} names no config table ({key!r})")
            table = table[key]
        table[last] = value
    return config_from_dict(raw, where)


def plan(config: RunConfig, seeds: Sequence[int], variants: Sequence[Variant], threads: int) -> List[Task]:
    """The runs of the study: per seed the main run, then its variants."""
    tasks: List[Task] = []
    for seed in seeds:
        main = with_overrides(config, {"run.seed": seed, "run.threads": threads}, f"seed {seed}")
        tasks.append(Task(f"seed_{seed}", main, seed))
        for variant in variants:
            tasks.append(Task(f"seed_{seed}-{variant.name}", with_overrides(main, variant.overrides, variant.name),
                              seed, variant.name, after=f"seed_{seed}"))
    return tasks


# ---- running --------------------------------------------------------------------------------------

def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def run_task(task: Task, out: Path) -> bool:
    """One `python -m ekd.train` in a subprocess (fresh memory and threads), output to its log."""
    run_dir, log = out / task.name, out / "logs" / f"{task.name}.log"
    config_path = out / "configs" / f"{task.name}.toml"
    atomic_write_text(config_path, config_to_toml(task.config))
    command = [sys.executable, "-m", "ekd.train", str(config_path), "--out", str(run_dir), "--quiet"]
    if run_dir.exists():
        command.append("--resume")
    elif task.after is not None:
        command += ["--teachers-from", str(out / task.after), "--stage", "student"]
    with open(log, "a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    return code == 0 and finished(run_dir)


def run_all(tasks: List[Task], out: Path, jobs: int, say) -> None:
    """Run the tasks on `jobs` workers; a variant starts once its seed's teachers exist."""
    lock, wake = threading.Lock(), threading.Condition()
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if finished(out / task.name):
            task.state = "done"
    total, started = len(tasks), time.perf_counter()

    def next_task() -> Optional[Task]:
        with wake:
            while True:
                # main runs first: each unlocks its variants, so the workers stay busy to the end
                pending = sorted((t for t in tasks if t.state == "pending"), key=lambda t: t.after is not None)
                if not pending:
                    return None
                for task in pending:
                    before = by_name.get(task.after) if task.after else None
                    if before is not None and before.state == "failed":
                        task.state = "failed"
                        say(f"{task.name}: skipped ({before.name} failed)")
                    elif before is None or before.state == "done":
                        task.state = "running"
                        return task
                if all(t.state != "pending" for t in tasks):
                    return None
                wake.wait()

    def worker() -> None:
        while (task := next_task()) is not None:
            begin = time.perf_counter()
            ok = run_task(task, out)
            with wake:
                task.state, task.seconds = ("done" if ok else "failed"), time.perf_counter() - begin
                done = sum(t.state in ("done", "failed") for t in tasks)
                wake.notify_all()
            with lock:
                what = "done" if ok else f"FAILED (see {out / 'logs' / (task.name + '.log')})"
                say(f"[{done}/{total}] {task.name}: {what} in {task.seconds / 60:.1f} min "
                    f"(study {(time.perf_counter() - started) / 60:.1f} min)")

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---- report ---------------------------------------------------------------------------------------

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
    for task in tasks:
        path = out / task.name / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        models = summary["models"]
        for model, splits in models.items():
            if task.variant and model not in ("student", "baseline"):
                continue  # a variant's teachers and ensemble are its seed's, already counted
            label = f"{model} ({task.variant})" if task.variant else model
            test = splits.get("test") or {}
            for metric in METRICS:
                if test.get(metric) is not None:
                    rows.setdefault(label, {}).setdefault(metric, []).append(test[metric])
            parameters[label] = summary["training"].get(model, {}).get("parameters", 0)
            seeds.setdefault(label, []).append(task.seed)
        if "student" in models and "baseline" in models:
            label = f"student / baseline ({task.variant})" if task.variant else "student / baseline"
            for metric in ("energy_rmse", "force_rmse"):
                student, baseline = models["student"]["test"].get(metric), models["baseline"]["test"].get(metric)
                if student is not None and baseline:
                    rows.setdefault(label, {}).setdefault(metric, []).append(student / baseline)
            seeds.setdefault(label, []).append(task.seed)
    return {"models": {label: {m: mean_spread(v) for m, v in metrics.items()} for label, metrics in rows.items()},
            "parameters": parameters, "seeds": seeds}


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
    return "\n".join(lines) + "\n"


# ---- command line -------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ekd.study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("config", nargs="?", type=Path, default=None,
                        help=f"run configuration (default: the demo, {DEFAULT_CONFIG.name})")
    parser.add_argument("--out", type=Path, required=True, help="study directory")
    parser.add_argument("--seeds", type=int, default=3, help="independent pipeline seeds (default 3)")
    parser.add_argument("--seed-step", type=int, default=DEFAULT_SEED_STEP,
                        help=f"distance between the seeds' [run] seed values (default {DEFAULT_SEED_STEP}; "
                             "starts at the config's seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config override for every run of the study, e.g. teachers.members=[] (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="another student per seed, trained on that seed's teachers with these config "
                             "overrides (repeatable)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs at once (default: min(2, cores))")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (default 0: cores / jobs); 1 when other work shares the cores")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.seeds < 1 or args.jobs < 1 or args.seed_step < 1 or args.threads < 0:
            raise ConfigError("--seeds, --jobs and --seed-step must be positive, --threads not negative")
        config = load_config(args.config)
        if args.overrides:
            config = with_overrides(config, parse_variant("--set:" + ";".join(args.overrides)).overrides, "--set")
        variants = [parse_variant(v) for v in args.variant]
        if len({v.name for v in variants}) != len(variants):
            raise ConfigError("two --variant options have the same name")
        seeds = [config.run.seed + i * args.seed_step for i in range(args.seeds)]
        threads = args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) // args.jobs)
        tasks = plan(config, seeds, variants, threads)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in ("logs", "configs"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    print(f"study: {len(seeds)} seeds ({', '.join(map(str, seeds))}) × {1 + len(variants)} runs, {args.jobs} at "
          f"once with {threads} thread(s) each; logs in {args.out / 'logs'}", flush=True)
    run_all(tasks, args.out, args.jobs, lambda line: print(line, flush=True))
    report = collect(tasks, args.out)
    command = "python -m ekd.study " + shlex.join(sys.argv[1:] if argv is None else argv)
    report["command"] = command
    atomic_write_text(args.out / "study.json", json.dumps(report, indent=1) + "\n")
    table = markdown(report, command)
    atomic_write_text(args.out / "study.md", table)
    print(table, flush=True)
    failed = [t.name for t in tasks if t.state == "failed"]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; their logs are in {args.out / 'logs'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
