"""Active learning (`python -m ekd.learn`), read top-down: grow the reference data where the
distilled student's dynamics go, until its MD stays where the teachers agree.

Round 0 is the EKD method on the data as given. Every round k ≥ 1 then
1. **selects** frames of round k−1's sampling MD: where the teachers' committee deviation lies in
   the window (`threshold`, `threshold_max`], and the last such frame before each trajectory
   failed (`ekd.learn.selection`);
2. asks the **oracle** for their energies (and forces, where it gives them), one call at a time,
   each result on disk before the next (`ekd.learn.oracle`);
3. writes them as the round's **additions** (with provenance; not those more than
   `max_excess_energy` eV/atom above their molecules' lowest training energies) and **retrains**: the teachers
   continue from round k−1's, relabel the grown data, and student and baseline learn afresh.
   The test split stays the original one; every addition joins the training split;
4. **samples**: MD of the student (and, for comparison, the baseline) from the same starts every
   round; survival and committee deviation go to the report, the frames to the next round.

Layout of OUT: learn.toml (the configuration; --resume must match it), oracle_check.json, and
round_k/ = a run directory (config.toml, teachers/, labels.h5, student/, baseline/, summary.*)
plus candidates.h5, oracle/NNNNNN.npz (one result per call), additions.h5, md_test.h5 (labelled frames
held out of training, `ekd.learn.md_test`) and sampling.h5;
learn.json, learn.md and learn.png report every round (`ekd.learn.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..config import LearnSettings, RunConfig, config_from_dict, config_to_toml
from ..data import AtomsData, read_data, save_split
from ..distill.augment import Teachers
from ..errors import ConfigError, EkdError
from ..fileio import atomic_write_text, file_sha256
from ..models import load_model
from ..run_directory import RunDirectory, open_run
from ..run_layout import BASELINE, STUDENT, teacher_name
from ..stability.criterion import FailureCriterion
from ..train.method import run_stages
from .additions import (atoms_arrays, atoms_from_arrays, count_additions, read_arrays, write_additions,
                        write_arrays)
from .oracle import Oracle, check_agreement, make_oracle, run_calls
from .report import round_report, write_learn_report
from .boxes import run_boxes
from .md_test import MD_TEST_NAME, hold_out, md_test_errors
from .sampling import (KINDS, Trajectories, committee_deviation, join, lowest_energies, run_dynamics, start_references,
                       starting_structures)
from .selection import REASONS, select_frames, window_tops

_PROVENANCE = ("round", "trajectory", "step", "temperature", "committee_deviation", "reason", "sources",
               "reference_energy")
_FRAME_KEYS = ("trajectory", "step", "temperature", "deviation", "reference_energy")
_TRAJECTORY_KEYS = ("failed_step", "reason", "start_temperature", "start_kind", "start_sources", "baseline_failed_step",
                    "baseline_reason")


@dataclasses.dataclass
class Learning:
    """One active-learning directory and its configuration."""

    config: RunConfig
    out: Path
    progress: bool = True
    say: Callable[[str], None] = print

    @functools.cached_property
    def original(self) -> AtomsData:
        """The data as given (round 0's), read once."""
        return read_data(self.config.data)

    def round_dir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def round_config(self, k: int) -> RunConfig:
        """Round k's run: the data plus rounds 1..k's additions, teachers continued from round k−1
        (the [learn] table stays out: a round's run does not depend on how it will be sampled)."""
        base = dataclasses.replace(self.config, learn=LearnSettings())
        if k == 0:
            return base
        data = dataclasses.replace(self.config.data, additions=[*self.config.data.additions, *[
            str(self.round_dir(j) / "additions.h5") for j in range(1, k + 1)]])
        teachers = dataclasses.replace(self.config.teachers, init_from=str(self.round_dir(k - 1)))
        return dataclasses.replace(base, data=data, teachers=teachers)


def run_learning(config: RunConfig, out: Path, rounds: Optional[int] = None, resume: bool = False,
                 progress: bool = True, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Rounds 0..`rounds` (default `[learn] rounds`) in `out`; returns the report."""
    rounds = config.learn.rounds if rounds is None else rounds
    if rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {rounds}")
    learning = Learning(config, Path(out), progress, say)
    check_identity(learning, resume)
    oracle = make_oracle(config.learn.oracle, config.learn.oracle_options)  # not installed: say so before any work
    rows: List[Dict[str, Any]] = []
    for k in range(rounds + 1):
        began = time.perf_counter()
        grown = grow(learning, k, oracle) if k else {}
        run = train_round(learning, k)
        sampled = sample_round(learning, k, run)
        tested = md_test_errors(run, [learning.round_dir(j) / MD_TEST_NAME for j in range(1, k + 1)])
        rows.append(round_report(k, run, grown, sampled, tested, time.perf_counter() - began))
        write_learn_report(learning.out, rows)
        say(f"learn: round {k} done: {rows[-1]['headline']}")
    return {"rounds": rows}


def check_identity(learning: Learning, resume: bool) -> None:
    """A new directory, or --resume into one made with this configuration."""
    path = learning.out / "learn.toml"
    text = config_to_toml(learning.config)
    if path.exists():
        if not resume:
            raise EkdError(f"{learning.out} holds an active-learning run; pass --resume to continue it, or choose "
                           "another --out")
        saved = tomllib.loads(config_to_toml(config_from_dict(tomllib.loads(path.read_text()), str(path))))
        current = tomllib.loads(text)
        for table in (saved, current):
            table.get("run", {}).pop("threads", None)
            table.get("learn", {}).pop("rounds", None)
        if saved != current:
            raise ConfigError(f"{path}: this run was made with another configuration; --resume needs the same one "
                              "(only [run] threads and [learn] rounds may change)")
        return
    learning.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# ---- 1–3. grow the data ---------------------------------------------------------------------------

def grow(learning: Learning, k: int, oracle: Oracle) -> Dict[str, Any]:
    """Round k's additions: candidates from round k−1's sampling, labelled by the oracle."""
    folder = learning.round_dir(k)
    folder.mkdir(parents=True, exist_ok=True)
    additions, candidates_path = folder / "additions.h5", folder / "candidates.h5"
    if not candidates_path.exists():
        write_candidates(learning, k, candidates_path)
    arrays, attrs = read_arrays(candidates_path, ["species", "positions", "n_atoms", "group", *_PROVENANCE])
    if not additions.exists():
        candidates = atoms_from_arrays(arrays, [str(g) for g in attrs["group_names"]], str(candidates_path))
        label_candidates(learning, k, oracle, candidates, {key: arrays[key] for key in _PROVENANCE}, additions)
    written = read_arrays(additions, [])[1]
    return {"calls": int(written["calls"]), "failed": int(written["failed"]), "too_high": int(written["too_high"]),
            "oracle_seconds": float(written["oracle_seconds"]), "added": count_additions(additions),
            "held_out": int(written.get("held_out", 0)),
            "level": str(written["level"]), "program": str(written["program"]),
            "candidates_over_threshold": int(attrs["over_threshold"]), "failed_trajectories": int(attrs["before_failure"])}


def label_candidates(learning: Learning, k: int, oracle: Oracle, candidates: AtomsData,
                     provenance: Dict[str, np.ndarray], additions: Path) -> None:
    """One oracle call per candidate (resumable), then the successful ones as `additions`."""
    folder, settings = learning.round_dir(k), learning.config.learn
    check_oracle(learning, oracle)
    offsets = candidates.offsets
    structures = [(candidates.species[offsets[c]:offsets[c + 1]], candidates.positions[offsets[c]:offsets[c + 1]])
                  for c in range(len(candidates))]
    learning.say(f"learn: round {k}: {len(candidates)} oracle calls ({settings.oracle}, {settings.jobs} process(es))")
    results = run_calls(settings.oracle, settings.oracle_options, structures, folder / "oracle", settings.jobs,
                        learning.progress, learning.say)
    ok = np.array([r.ok for r in results])
    for c in np.flatnonzero(~ok)[:5]:
        learning.say(f"learn: round {k}: oracle failed on candidate {c} "
                     f"({candidates.group_names[candidates.group[c]]}): {results[c].message}")
    if not ok.any():
        raise EkdError(f"[learn] round {k}: every one of {len(results)} oracle calls failed (see "
                       f"{folder / 'oracle'}); nothing to add")
    excess = np.array([(r.energy - provenance["reference_energy"][c]) / candidates.n_atoms[c]
                       for c, r in enumerate(results)])
    too_high = ok & (excess > settings.max_excess_energy) if settings.max_excess_energy else np.zeros(len(ok), bool)
    if too_high.any():
        learning.say(f"learn: round {k}: {int(too_high.sum())} labelled conformations lie more than "
                     f"max_excess_energy = {settings.max_excess_energy:g} eV/atom above their molecules' lowest "
                     "training energies; not added")
    rows = np.flatnonzero(ok & ~too_high)
    if not len(rows):
        raise EkdError(f"[learn] round {k}: no labelled conformation is within max_excess_energy = "
                       f"{settings.max_excess_energy:g} eV/atom of its molecules' lowest training energies; lower "
                       "threshold_max, or raise max_excess_energy")
    has_forces = np.array([bool(np.isfinite(results[c].forces).all()) for c in rows])
    held = hold_out(has_forces, settings.md_test_fraction, np.random.default_rng([learning.config.run.seed, k, 17]))
    attrs = {"round": k, "oracle": settings.oracle, "level": oracle.level, "program": oracle.program,
             "reasons": list(REASONS), "oracle_options": json.dumps(settings.oracle_options),
             "calls": len(results), "failed": int((~ok).sum()), "too_high": int(too_high.sum()),
             "held_out": int(held.sum()), "oracle_seconds": float(sum(r.seconds for r in results))}

    def write(path: Path, chosen: np.ndarray) -> None:
        write_additions(path, candidates.subset(chosen), np.array([results[c].energy for c in chosen]),
                        np.concatenate([results[c].forces for c in chosen]),
                        {**{key: value[chosen] for key, value in provenance.items()}, "candidate": chosen}, attrs)

    if held.any():  # written first: the additions file marks the round's labelling as done
        write(folder / MD_TEST_NAME, rows[held])
    write(additions, rows[~held])
    learning.say(f"learn: round {k}: wrote {additions} ({int((~held).sum())} conformations, {int(held.sum())} held out "
                 f"as MD test frames, {int((~ok).sum())} failed calls)")


def write_candidates(learning: Learning, k: int, path: Path) -> None:
    """Round k's oracle calls, selected from round k−1's sampling MD (written once, so a resumed
    round calls the oracle on exactly the same structures)."""
    frames, trajectories, deviation, reference = read_sampling(learning.round_dir(k - 1) / "sampling.h5")
    selection = select_frames(trajectories, deviation, learning.config.learn)
    chosen = frames.subset(selection.frames)
    t = trajectories.trajectory[selection.frames]
    write_arrays(path, {**atoms_arrays(chosen), "round": np.full(len(chosen), k),
                        "trajectory": t, "step": trajectories.step[selection.frames],
                        "temperature": trajectories.temperature[selection.frames],
                        "committee_deviation": deviation[selection.frames], "reason": selection.reason,
                        "reference_energy": reference[selection.frames],
                        "sources": trajectories.start_sources[t]},
                 {"group_names": list(frames.group_names), "over_threshold": selection.over_threshold,
                  "before_failure": selection.before_failure})
    learning.say(f"learn: round {k}: {len(chosen)} candidates ({int((selection.reason == 0).sum())} before a "
                 f"failure, {int((selection.reason == 1).sum())} where the teachers disagree; "
                 f"{selection.over_threshold} frames over the threshold)")


def check_oracle(learning: Learning, oracle: Oracle) -> None:
    """Once per directory: the oracle knows the elements and reproduces data conformations."""
    path = learning.out / "oracle_check.json"
    settings = learning.config.learn
    identity = {"oracle": settings.oracle, "options": settings.oracle_options}
    if path.exists() and {k: v for k, v in json.loads(path.read_text()).items() if k in identity} == identity:
        return
    data = learning.original
    oracle.check_elements(data.elements)
    ids = np.argsort(data.n_atoms, kind="stable")[: settings.oracle_check]
    offsets = data.offsets
    species = [data.species[offsets[c]:offsets[c + 1]] for c in ids]
    positions = [data.positions[offsets[c]:offsets[c + 1]] for c in ids]
    labels = [f"{c} ({data.group_names[data.group[c]]})" for c in ids]
    differences = check_agreement(oracle, settings.oracle, species, positions, data.energy[ids], labels,
                                  settings.oracle_tolerance)
    learning.say(f"learn: oracle {settings.oracle} ({oracle.level}, {oracle.program}) reproduces {len(ids)} data "
                 f"conformations within {max(map(abs, differences), default=0):.2g} eV")
    atomic_write_text(path, json.dumps({**identity, "level": oracle.level, "program": oracle.program,
                                        "conformations": [int(c) for c in ids], "differences_eV": differences},
                                       indent=1))


# ---- 3. retrain --------------------------------------------------------------------------------------

def train_round(learning: Learning, k: int) -> RunDirectory:
    """Round k's EKD run (teachers, labels, student, baseline, summary), reused when finished."""
    folder, config = learning.round_dir(k), learning.round_config(k)
    if k:
        prepare_split(learning, k, config)
    if not (folder / "summary.json").exists():
        learning.say(f"learn: round {k}: training in {folder}")
        run_stages(config, folder, "all", resume=True, progress=learning.progress)
    return open_run(folder, config, progress=False)


def prepare_split(learning: Learning, k: int, config: RunConfig) -> None:
    """Round k keeps round 0's split and reference energies; every addition trains."""
    folder, first = learning.round_dir(k), learning.round_dir(0)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "split.json").exists():
        return
    split = {name: np.asarray(ids) for name, ids in json.loads((first / "split.json").read_text()).items()}
    n_first = len(learning.original)
    n_now = n_first + sum(count_additions(Path(p)) for p in config.data.additions[len(learning.config.data.additions):])
    split["train"] = np.concatenate([split["train"], np.arange(n_first, n_now)])
    shutil.copy2(first / "references.json", folder / "references.json")
    save_split(split, folder / "split.json")


# ---- 4. sample -----------------------------------------------------------------------------------------

def sample_round(learning: Learning, k: int, run: RunDirectory) -> Dict[str, Any]:
    """MD of round k's student (frames, committee deviation) and baseline (survival only)."""
    path = learning.round_dir(k) / "sampling.h5"
    student_path = run.checkpoint(STUDENT)
    if not path.exists():
        settings, seed = learning.config.learn, learning.config.run.seed
        teachers = Teachers([load_model(run.checkpoint(teacher_name(t))) for t in run.config.teachers.indices()],
                            run.elements, run.dtype, run.config.run.device, run.config.labels.batch_size)
        first_train = np.asarray(json.loads((learning.round_dir(0) / "split.json").read_text())["train"])
        starts = starting_structures(run.data, first_train, settings, np.random.default_rng([seed, 11]))
        criterion = FailureCriterion()
        baseline_path = run.checkpoint(BASELINE)
        student = run_dynamics(load_model(student_path).to(run.dtype), teachers, starts, settings, seed, criterion,
                               learning.progress, f"round {k} student")
        deviation = committee_deviation(teachers, student.frames, learning.progress)
        baseline = run_dynamics(load_model(baseline_path).to(run.dtype), teachers, starts, settings, seed, criterion,
                                learning.progress, f"round {k} baseline") if baseline_path.exists() else None
        minima = lowest_energies(run.data, first_train)
        reference = start_references(run.data, student.start_sources, minima)[student.trajectory]
        if settings.box_starts:
            student, deviation, reference, baseline = sample_boxes(learning, k, run, teachers, student, deviation,
                                                                   reference, baseline, minima)
        write_sampling(path, student, deviation, reference, baseline, file_sha256(student_path))
    frames, trajectories, deviation, _ = read_sampling(path)
    arrays, _ = read_arrays(path, ["baseline_failed_step"])
    return sampling_summary(trajectories, deviation, arrays["baseline_failed_step"], learning.config.learn.threshold,
                            window_tops(trajectories, learning.config.learn))


def sample_boxes(learning: Learning, k: int, run: RunDirectory, teachers: Teachers, student: Trajectories,
                 deviation: np.ndarray, reference: np.ndarray, baseline: Optional[Trajectories],
                 minima: Dict[str, float]) -> tuple[Trajectories, np.ndarray, np.ndarray, Optional[Trajectories]]:
    """The molecular trajectories joined by the periodic boxes run in LAMMPS (`ekd.learn.boxes`)."""
    folder, settings, seed = learning.round_dir(k) / "boxes", learning.config.learn, learning.config.run.seed
    criterion = FailureCriterion()
    original = run.data.subset(np.arange(len(learning.original)))  # not the additions' clusters
    exported = export_for_lammps(run, STUDENT, folder)
    boxes, box_deviation, box_reference = run_boxes(exported, teachers, original, settings, seed, criterion, folder,
                                                    "student", True, minima)
    learning.say(f"learn: round {k}: student boxes survived {int((boxes.failed_step < 0).sum())} of "
                 f"{len(boxes.failed_step)}; {len(boxes.frames)} clusters carved")
    student, deviation = join(student, boxes), np.concatenate([deviation, box_deviation])
    reference = np.concatenate([reference, box_reference])
    if baseline is not None:
        theirs = run_boxes(export_for_lammps(run, BASELINE, folder), teachers, original, settings, seed, criterion,
                           folder, "baseline", False, minima)[0]
        baseline = join(baseline, theirs)
    return student, deviation, reference, baseline


def export_for_lammps(run: RunDirectory, name: str, folder: Path) -> Path:
    """A round's model exported (float32) for pair_style ekd, once."""
    from ..export import export_model

    path = folder / f"{name}.pt"
    if not path.exists():
        export_model([run.checkpoint(name)], path, torch.float32)
    return path


def write_sampling(path: Path, student: Trajectories, deviation: np.ndarray, reference: np.ndarray,
                   baseline: Optional[Trajectories], student_sha256: str) -> None:
    n = len(student.failed_step)
    write_arrays(path, {**atoms_arrays(student.frames), "trajectory": student.trajectory, "step": student.step,
                        "temperature": student.temperature, "deviation": deviation, "reference_energy": reference,
                        "failed_step": student.failed_step, "reason": np.array(student.reason, dtype=object),
                        "start_temperature": student.start_temperature, "start_kind": student.start_kind,
                        "start_sources": student.start_sources,
                        "baseline_failed_step": baseline.failed_step if baseline else np.full(n, -2),
                        "baseline_reason": np.array(baseline.reason if baseline else [""] * n, dtype=object)},
                 {"group_names": list(student.frames.group_names), "student_sha256": student_sha256,
                  "kinds": list(KINDS)})


def read_sampling(path: Path) -> tuple[AtomsData, Trajectories, np.ndarray, np.ndarray]:
    """Frames, trajectories, committee deviation and reference energy per frame."""
    arrays, attrs = read_arrays(path, ["species", "positions", "n_atoms", "group", *_FRAME_KEYS, *_TRAJECTORY_KEYS])
    frames = atoms_from_arrays(arrays, [str(g) for g in attrs["group_names"]], str(path))
    trajectories = Trajectories(frames, arrays["trajectory"], arrays["step"], arrays["temperature"],
                                arrays["failed_step"], list(arrays["reason"]), arrays["start_temperature"],
                                arrays["start_kind"], arrays["start_sources"])
    return frames, trajectories, arrays["deviation"], arrays["reference_energy"]


def sampling_summary(student: Trajectories, deviation: np.ndarray, baseline_failed: np.ndarray,
                     threshold: float, tops: np.ndarray) -> Dict[str, Any]:
    """Survival (student, baseline) per kind of start, and how often the teachers disagreed."""
    out: Dict[str, Any] = {}
    for kind, name in enumerate(KINDS):
        rows = student.start_kind == kind
        if rows.any():
            out[name] = {"trajectories": int(rows.sum()), "student_survived": int((student.failed_step[rows] < 0).sum()),
                         "baseline_survived": int((baseline_failed[rows] == -1).sum()) if (baseline_failed > -2).all()
                         else None}
    out["frames"] = int(len(deviation))
    out["frames_in_window"] = int(((deviation > threshold) & (deviation <= tops)).sum())
    out["deviation_median"] = float(np.median(deviation)) if len(deviation) else None
    out["deviation_max"] = float(deviation.max()) if len(deviation) else None
    return out
