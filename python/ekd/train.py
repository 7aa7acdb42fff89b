"""`python -m ekd.train [CONFIG.toml] [--out DIR] [--stage STAGE] [--resume]`: the EKD method.

Read top-down, this file is the method:

1. **Teachers.** An ensemble of N models learns the reference (e.g. coupled-cluster) energies
   only; the teachers differ by seed and optionally by architecture or bootstrap resample.
2. **Labels.** The teachers label every conformation: forces −dE/dR (each teacher's, their mean
   and spread) and atomic energies. Forces of a model trained on energies are noisy; the mean
   over an ensemble is a much better estimate than any single member's.
3. **Student.** A (usually smaller, faster) model learns the reference energies plus the
   ensemble-mean forces, and optionally the ensemble-mean atomic energies. A *baseline* of the
   same architecture learns the energies alone, so every run shows what distillation bought.
4. **Summary.** Every model's energy and force errors on every split against the reference data.

Without CONFIG the whole method runs on the embedded CCSD(T) data set with the demo settings
of `ekd/configs/default.toml`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from .config import DEFAULT_CONFIG, RunConfig, config_to_toml, load_config
from .distill import read_labels, write_labels
from .errors import EkdError
from .models import Potential, build_model, count_parameters, load_model
from .run_directory import RunDirectory, open_run
from .summary import write_summary
from .fileio import file_sha256
from .training import CHECKPOINT_NAME, TrainConfig, Trainer, read_checkpoint

STAGES = ("teachers", "label", "student", "summary", "all")


# ---- 1. teachers ------------------------------------------------------------------------------

def train_teachers(run: RunDirectory, resume: bool) -> None:
    """Each teacher learns the energies only, from its own seed (and resample, if configured)."""
    settings = run.config.teachers
    for k in range(settings.count):
        kind, hyperparameters, seed = settings.member(k, run.config.run.seed)
        train_ids = run.split["train"]
        if settings.bootstrap:
            train_ids = np.sort(np.random.default_rng(seed).choice(train_ids, size=len(train_ids)))
        model = new_model(run, kind, hyperparameters, seed)
        fit(run, model, train_ids, settings.train, run.teacher_dir(k), seed, f"teacher_{k}", resume)


# ---- 2. labels -----------------------------------------------------------------------------------

def label_data(run: RunDirectory, resume: bool) -> None:
    """The ensemble labels every conformation (all splits) with forces and atomic energies."""
    paths = teacher_checkpoints(run)
    hashes = [file_sha256(p) for p in paths]
    if run.labels_path.exists():
        read_labels(run.labels_path, hashes=hashes)  # refuses labels of other teachers
        say(run, f"labels: {run.labels_path} is complete, keeping it")
        return
    partial = run.labels_path.with_name(run.labels_path.name + ".partial")
    if partial.exists() and not resume:
        raise EkdError(f"{partial} is from an interrupted run; pass --resume to continue it")
    teachers = [load_model(p) for p in paths]
    graph = run.graph(max(t.cutoff for t in teachers))
    write_labels(teachers, [p.parent.name for p in paths], hashes, graph, run.labels_path,
                 batch_size=run.config.labels.batch_size, resume=resume, progress=run.progress)
    say(run, f"labels: wrote {run.labels_path}")


# ---- 3. student and baseline ------------------------------------------------------------------

def train_student(run: RunDirectory, resume: bool) -> None:
    """The student learns energies + ensemble-mean forces (+ atomic energies); the baseline,
    same architecture and settings, learns the energies alone."""
    hashes = [file_sha256(p) for p in teacher_checkpoints(run)]
    settings = run.config.student
    seed = run.config.run.seed + 1000
    model = new_model(run, settings.kind, settings.model, seed)
    labels = read_labels(run.labels_path, graph=run.graph(model.cutoff), hashes=hashes)
    student_atom_references = run.references[run.graph(model.cutoff).species.cpu().numpy()]
    distilled = run.graph(model.cutoff, atom_labels={
        "forces": labels.forces_mean,
        "atom_energy": labels.atom_energy_mean - student_atom_references,
    })
    fit(run, model, run.split["train"], settings.train, run.student_dir, seed, "student", resume, graph=distilled)
    if run.config.baseline.enabled:
        baseline_settings = TrainConfig(**{**settings.train.__dict__, "forces_weight": 0.0,
                                           "atom_energy_weight": 0.0})
        baseline = new_model(run, settings.kind, settings.model, seed)
        fit(run, baseline, run.split["train"], baseline_settings, run.baseline_dir, seed, "baseline", resume)


# ---- shared steps -------------------------------------------------------------------------------

def new_model(run: RunDirectory, kind: str, hyperparameters: dict, seed: int) -> Potential:
    """A freshly initialised model (seeded) carrying the run's reference energies."""
    torch.manual_seed(seed)
    model = build_model(kind, run.elements, hyperparameters)
    model.reference_energies = [float(v) for v in run.references]
    return model.to(run.dtype).to(run.config.run.device)


def fit(run: RunDirectory, model: Potential, train_ids: np.ndarray, settings: TrainConfig, out: Path,
        seed: int, name: str, resume: bool, graph=None) -> None:
    """Train `model` into `out`, reusing a finished checkpoint and resuming an unfinished one."""
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists():
        state = read_checkpoint(checkpoint)
        if state.get("finished"):
            say(run, f"{name}: already trained ({state['stop_reason']}), keeping {checkpoint}")
            return
        if not resume:
            raise EkdError(f"{checkpoint} is from an interrupted run; pass --resume to continue it")
        say(run, f"{name}: resuming from epoch {state['epoch']}")
    say(run, f"{name}: {model.kind}, {count_parameters(model):,} parameters, {len(train_ids)} training "
             f"conformations")
    trainer = Trainer(model, graph if graph is not None else run.graph(model.cutoff), train_ids,
                      run.split["val"], settings, out, seed, name, progress=run.progress)
    result = trainer.run(resume=True)
    say(run, f"{name}: {result.stop_reason}; best epoch {result.best_epoch}, "
             f"{result.conformations_per_second:.0f} conformations/s")


def teacher_checkpoints(run: RunDirectory) -> List[Path]:
    """Checkpoints of every teacher, refusing to go on with unfinished ones."""
    paths = []
    for k in range(run.config.teachers.count):
        path = run.teacher_dir(k) / CHECKPOINT_NAME
        if not path.exists() or not read_checkpoint(path).get("finished"):
            raise EkdError(f"teacher_{k} is not trained yet ({path}); run the 'teachers' stage first")
        paths.append(path)
    return paths


def say(run: RunDirectory, message: str) -> None:
    run.log.append(message)
    print(message, flush=True)


def adopt_teachers(source: Path, config: RunConfig, out: Path) -> None:
    """Copy another run's finished teachers (and labels) into `out`, if that run used the same
    data, split, references and teacher settings; the label and summary stages check hashes."""
    saved_path = Path(source) / "config.toml"
    if not saved_path.exists():
        raise EkdError(f"--teachers-from {source}: not a run directory (no config.toml)")
    saved, current = tomllib.loads(saved_path.read_text()), tomllib.loads(config_to_toml(config))
    for table in ("data", "split", "references", "teachers"):
        if saved.get(table) != current.get(table):
            raise EkdError(f"--teachers-from {source}: its [{table}] differs from this config's; its teachers "
                           "would not be the ones this run asks for")
    if (Path(out) / "teachers").exists():
        raise EkdError(f"--teachers-from: {out} already has teachers")
    shutil.copytree(Path(source) / "teachers", Path(out) / "teachers")
    if (Path(source) / "labels.h5").exists():
        shutil.copy2(Path(source) / "labels.h5", Path(out) / "labels.h5")
    print(f"reusing the teachers of {source}", flush=True)


# ---- command line ----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ekd.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, default=None,
                        help=f"run configuration (TOML); default: the demo run {DEFAULT_CONFIG.name} "
                             "on the embedded CCSD(T) data")
    parser.add_argument("--out", type=Path, default=Path("runs/default"),
                        help="run directory (default: runs/default)")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="teachers | label | student (student and baseline) | summary | all (default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint / labels batch")
    parser.add_argument("--teachers-from", type=Path, default=None, metavar="RUN_DIR",
                        help="reuse the trained teachers and labels of another run with the same data, split, "
                             "references and teachers settings (to try other students)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return parser.parse_args(argv)


def run_stages(config: RunConfig, out: Path, stage: str, resume: bool, progress: bool = True) -> RunDirectory:
    """Run the requested stage(s) of the method in `out`; always ends with a fresh summary."""
    torch.set_num_threads(config.run.threads or os.cpu_count() or 1)
    run = open_run(out, config, progress)
    for line in run.log:
        print(line, flush=True)
    if stage in ("teachers", "all"):
        train_teachers(run, resume)
    if stage in ("label", "all"):
        label_data(run, resume)
    if stage in ("student", "all"):
        train_student(run, resume)
    table = write_summary(run)
    print(table, flush=True)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.print_config:
            print(config_to_toml(config))
            return 0
        if config.description:
            print(config.description.strip(), flush=True)
        if args.teachers_from is not None:
            adopt_teachers(args.teachers_from, config, args.out)
        run_stages(config, args.out, args.stage, args.resume, progress=not args.quiet)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
