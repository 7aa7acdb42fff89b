"""The EKD method (`python -m ekd.train` runs it). Read top-down, this file is the method:

1. **Teachers.** An ensemble of N models learns the reference (e.g. coupled-cluster) energies
   only; the teachers differ by seed and optionally by architecture or bootstrap resample.
2. **Labels.** The teachers label every conformation: forces −dE/dR (each teacher's, their mean
   and spread) and atomic energies. Forces of a model trained on energies are noisy; the mean
   over an ensemble is a much better estimate than any single member's. Optionally (`[augment]`)
   they also label conformations the reference never computed: displaced copies of the training
   conformations and frames of MD driven by the ensemble, where the teachers agree.
3. **Student.** A (usually smaller, faster) model learns the reference energies plus the
   ensemble-mean forces, and optionally the ensemble-mean atomic energies. A *baseline* of the
   same architecture learns the energies alone, so every run shows what distillation bought.
4. **Summary.** Every model's energy and force errors on every split against the reference data.

Under torchrun the same stages run on K processes (docs/distributed.md): with `[run] parallel =
"data"` every model trains on all of them (DistributedDataParallel, HDF5 data read in shards),
with "teachers" each model trains whole on one of them; the labels are made in blocks, one per
process, and merged by rank 0.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from ..config import RunConfig, config_to_toml
from ..data.sharded import balanced_ranges
from ..data import GraphData, concatenate, element_index
from ..distill import Labels, read_labels, write_labels
from ..distill.augment import Teachers, make_augmented, read_augmented
from ..distill.labels import check_labels, interrupted_label_files, merge_label_blocks, write_label_block
from ..errors import EkdError
from ..evaluate import fit_uncertainty_scale
from ..fileio import atomic_torch_save, file_sha256
from ..models import Potential, build_model, count_parameters, load_model, model_from_checkpoint
from ..models.potential import has_uncertainty
from ..run_directory import RunDirectory, open_run
from ..summary import write_summary
from ..run_layout import BASELINE, STUDENT, RunLayout, teacher_name
from ..training import TrainConfig, Trainer, predict_all, read_checkpoint
from ..training.distributed import Context, DistributedTrainer

STAGES = ("teachers", "label", "augment", "student", "summary", "all")


# ---- 1. teachers ------------------------------------------------------------------------------

def train_teachers(run: RunDirectory, resume: bool, dist: Optional[Context] = None) -> None:
    """Each teacher learns the energies only, from its own seed (and resample, if configured)."""
    settings = run.config.teachers
    for k in settings.indices():
        if not mine(run, dist, k):
            continue
        kind, hyperparameters, seed = settings.member(k, run.config.run.seed)
        train_ids = run.split["train"]
        if settings.bootstrap:
            train_ids = np.sort(np.random.default_rng(seed).choice(train_ids, size=len(train_ids)))
        model = new_model(run, kind, hyperparameters, seed)
        if settings.init_from:
            start_from(model, RunLayout(Path(settings.init_from)).checkpoint(teacher_name(k)), teacher_name(k))
        fit(run, model, train_ids, settings.train, teacher_name(k), seed, resume, dist=dist)
    if dist is not None:
        dist.wait_for_all("teachers")


# ---- 2. labels -----------------------------------------------------------------------------------

def label_data(run: RunDirectory, resume: bool, dist: Optional[Context] = None) -> None:
    """The ensemble labels every conformation (all splits) with forces and atomic energies."""
    paths = teacher_checkpoints(run)
    hashes = [file_sha256(p) for p in paths]
    if dist is not None:
        label_data_in_blocks(run, resume, dist, paths, hashes)
        return
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


def label_data_in_blocks(run: RunDirectory, resume: bool, dist: Context, paths: List[Path], hashes: List[str]) -> None:
    """Under torchrun: each rank labels a contiguous block of conformations (its shard, when
    the data are sharded) into a block file; rank 0 merges the blocks into labels.h5."""
    def state() -> bool:
        if run.labels_path.exists():
            check_labels(run.labels_path, hashes)  # refuses labels of other teachers
            return True
        if interrupted_label_files(run.labels_path) and not resume:
            raise EkdError(f"{run.labels_path}: partial labels from an interrupted run are there; pass --resume "
                           "to continue them")
        return False

    if on_main(dist, state):
        say(run, f"labels: {run.labels_path} is complete, keeping it")
        return
    teachers = [load_model(p) for p in paths]
    graph = run.graph(max(t.cutoff for t in teachers))
    ranges = balanced_ranges(run.all_n_atoms, dist.world_size)
    start, stop = ranges[dist.rank]
    held = run.held
    if not held.start <= start <= stop <= held.stop:
        raise EkdError(f"rank {dist.rank} holds conformations {held.start}..{held.stop} but should label "
                       f"{start}..{stop}")
    write_label_block(teachers, [p.parent.name for p in paths], hashes, graph, run.labels_path, start, stop,
                      start - held.start, batch_size=run.config.labels.batch_size, resume=resume,
                      progress=run.progress and dist.is_main)
    dist.wait_for_all("label blocks")
    if dist.is_main:
        offsets = np.concatenate([[0], np.cumsum(run.all_n_atoms)])
        source = run.source.source if run.source is not None else run.data.source
        merge_label_blocks(run.labels_path, [(a, b, int(offsets[a])) for a, b in ranges],
                           [p.parent.name for p in paths], hashes, run.fingerprint(), source,
                           len(run.all_n_atoms), int(offsets[-1]))
    dist.wait_for_all("labels merged")
    if dist.is_main:
        say(run, f"labels: wrote {run.labels_path} ({dist.world_size} blocks)")


def augment_data(run: RunDirectory, resume: bool, dist: Optional[Context] = None) -> None:
    """The teachers label conformations beyond the data (`[augment]`; nothing when it is off)."""
    settings = run.config.augment
    if not settings.enabled:
        return
    refuse_augment_under_torchrun(dist)
    paths = teacher_checkpoints(run)
    hashes = [file_sha256(p) for p in paths]
    if read_augmented(run.augmented_path, hashes, run.fingerprint(), settings, run.config.run.seed) is not None:
        say(run, f"augment: {run.augmented_path} is complete, keeping it")
        return
    teachers = Teachers([load_model(p) for p in paths], run.elements, run.dtype, run.config.run.device,
                        run.config.labels.batch_size)
    make_augmented(run.augmented_path, teachers, hashes, run.data, run.fingerprint(), run.split["train"], settings,
                   run.config.run.seed, resume=resume, progress=run.progress, say=lambda line: say(run, line))
    say(run, f"augment: wrote {run.augmented_path}")


def refuse_augment_under_torchrun(dist: Optional[Context]) -> None:
    if dist is not None:
        raise EkdError("[augment] runs in one process only (not yet under torchrun); run the method without "
                       "torchrun, or set augment.displaced and augment.md_starts to 0")


# ---- 3. student and baseline ------------------------------------------------------------------

def train_student(run: RunDirectory, resume: bool, dist: Optional[Context] = None) -> None:
    """The student learns energies + ensemble-mean forces (+ atomic energies); the baseline,
    same architecture and settings, learns the energies alone."""
    settings = run.config.student
    seed = run.config.run.seed + 1000
    model = new_model(run, settings.kind, settings.architecture(uncertainty=True), seed)
    distilled, train_ids = student_graph(run, model.cutoff, dist)
    if mine(run, dist, 0):
        fit(run, model, train_ids, settings.train, STUDENT, seed, resume, graph=distilled, dist=dist)
    if run.config.baseline.enabled and mine(run, dist, 1):
        baseline_settings = TrainConfig(**{**settings.train.__dict__, "forces_weight": 0.0,
                                           "atom_energy_weight": 0.0, "uncertainty_weight": 0.0})
        baseline = new_model(run, settings.kind, settings.architecture(uncertainty=False), seed)
        fit(run, baseline, run.split["train"], baseline_settings, BASELINE, seed, resume, dist=dist)
    if dist is not None:
        dist.wait_for_all("student")


def student_graph(run: RunDirectory, cutoff: float, dist: Optional[Context] = None
                  ) -> tuple[GraphData, np.ndarray]:
    """The student's training graph (the data with the teachers' labels as atom targets, plus
    the augmented conformations when `[augment]` is on) and its training conformation ids."""
    hashes = [file_sha256(p) for p in teacher_checkpoints(run)]
    held = run.held
    if held.full:
        labels = read_labels(run.labels_path, graph=run.graph(cutoff), hashes=hashes)
    else:  # this rank's rows only; rank 0 checks the file belongs to the whole data set
        on_main(dist, lambda: check_labels(run.labels_path, hashes, run.fingerprint()))  # type: ignore[arg-type]
        labels = read_labels(run.labels_path, hashes=hashes, part=(
            slice(held.start, held.stop), slice(run.atom_offset(held.start), run.atom_offset(held.stop))))
    if run.config.augment.enabled:
        return augmented_graph(run, cutoff, labels, hashes, dist)
    student_atom_references = run.references[run.graph(cutoff).species.cpu().numpy()]
    distilled = run.graph(cutoff, atom_labels={
        "forces": labels.forces_mean,
        "atom_energy": labels.atom_energy_mean - student_atom_references,
        "uncertainty": labels.forces_std,
    })
    return distilled, run.split["train"]


def augmented_graph(run: RunDirectory, cutoff: float, labels: Labels, hashes: List[str],
                    dist: Optional[Context]) -> tuple[GraphData, np.ndarray]:
    """The student's training graph with the augmented conformations after the data's, and the
    training ids (the training split and every augmented conformation; validation stays the
    data's own). Augmented conformations have no reference energy: NaN, which the loss skips,
    unless `[augment] energies = "ensemble"` puts the ensemble-mean energy there."""
    refuse_augment_under_torchrun(dist)
    augmented = read_augmented(run.augmented_path, hashes, run.fingerprint(), run.config.augment, run.config.run.seed)
    if augmented is None:
        raise EkdError(f"{run.augmented_path} is missing or was made by other teachers or [augment] settings; "
                       "run the 'augment' stage first")
    extra = augmented.data
    references = run.references[element_index(extra.species, run.elements, extra.source)]
    energy = np.full(len(extra), np.nan)
    if run.config.augment.energies == "ensemble":
        energy = augmented.labels["energy_mean"] - np.bincount(extra.conformation_of_atom, references, len(extra))
    combined = concatenate([run.data, extra], f"{run.data.source} + {run.augmented_path.name}")
    data_references = run.references[element_index(run.data.species, run.elements, run.data.source)]
    conformation_labels = {"energy": np.concatenate([run.residual_energy(), energy])}
    weights = run.loss_weights()
    if weights is not None:  # augmented conformations weigh as the original data
        conformation_labels["weight"] = np.concatenate([weights, np.ones(len(extra))])
    graph = GraphData(combined, run.elements, cutoff, run.dtype, run.config.run.device,
                      conformation_labels=conformation_labels,
                      atom_labels={
                          "forces": np.concatenate([labels.forces_mean, augmented.labels["forces_mean"]]),
                          "atom_energy": np.concatenate([labels.atom_energy_mean - data_references,
                                                         augmented.labels["atom_energy_mean"] - references]),
                          "uncertainty": np.concatenate([labels.forces_std, augmented.labels["forces_std"]])})
    say(run, f"student: {len(extra)} augmented conformations beside the {len(run.split['train'])} training ones")
    return graph, np.concatenate([run.split["train"], len(run.data) + np.arange(len(extra))])


def calibrate_student(run: RunDirectory) -> None:
    """Scale the student's uncertainty so that, on the validation split, its RMS equals the RMS of
    the student's true force error |F − F_true| (thresholds then mean eV/Å of error); the scale
    lives in the checkpoint's weights and the export carries it. Data without true forces in the
    validation split leave the scale at 1 (the head then predicts the teachers' spread), and the
    checkpoint says why. Done once; needs every conformation in memory (rank 0's summary run)."""
    path = run.checkpoint(STUDENT)
    if not path.exists():
        return
    state = read_checkpoint(path)
    if not state.get("finished") or "calibration" in state:
        return
    model = model_from_checkpoint(state).to(run.config.run.device)
    if not has_uncertainty(model):
        return
    prediction = predict_all(model, run.graph(model.cutoff), run.split["val"])
    scale = fit_uncertainty_scale(prediction, run.data)
    if scale is None:
        state["calibration"] = {"uncertainty_scale": 1.0, "fitted_on": None,
                                "reason": "the validation split has no true forces"}
        say(run, "student: uncertainty left uncalibrated (the validation split has no true forces)")
    else:
        key = "uncertainty_head.scale"
        state["best_state"][key] = state["best_state"][key] * scale
        state["model_state"][key] = state["model_state"][key] * scale
        state["calibration"] = {"uncertainty_scale": scale, "fitted_on": "val"}
        say(run, f"student: uncertainty scaled by {scale:.3f} to match its validation force errors")
    atomic_torch_save(state, path)


# ---- shared steps -------------------------------------------------------------------------------

def new_model(run: RunDirectory, kind: str, hyperparameters: dict, seed: int) -> Potential:
    """A freshly initialised model (seeded) carrying the run's reference energies."""
    torch.manual_seed(seed)
    model = build_model(kind, run.elements, hyperparameters)
    model.reference_energies = [float(v) for v in run.references]
    return model.to(run.dtype).to(run.config.run.device)


def start_from(model: Potential, checkpoint: Path, name: str) -> None:
    """Start `model` from the best weights of another run's finished checkpoint (`[teachers]
    init_from`): same kind, hyperparameters and elements; the run's reference energies stay."""
    state = read_checkpoint(checkpoint)
    if not state.get("finished"):
        raise EkdError(f"[teachers] init_from: {checkpoint} is not a finished checkpoint of {name}")
    previous = model_from_checkpoint(state)
    if previous.kind != model.kind or list(previous.elements) != list(model.elements):
        raise EkdError(f"[teachers] init_from: {checkpoint} is a {previous.kind} model of elements "
                       f"{list(previous.elements)}; {name} here is a {model.kind} model of {list(model.elements)}")
    try:
        model.load_state_dict({k: v.to(model_dtype(model)) for k, v in previous.state_dict().items()})
    except RuntimeError as err:
        raise EkdError(f"[teachers] init_from: {checkpoint} has other hyperparameters than {name} here "
                       f"({str(err).splitlines()[0]})") from None


def model_dtype(model: Potential) -> torch.dtype:
    return next(model.parameters()).dtype


def fit(run: RunDirectory, model: Potential, train_ids: np.ndarray, settings: TrainConfig, name: str,
        seed: int, resume: bool, graph=None, dist: Optional[Context] = None) -> None:
    """Train `model` into the run's folder for `name`, reusing a finished checkpoint and resuming an unfinished one.
    Under torchrun with parallel = "data" every rank takes part (DistributedDataParallel);
    with "teachers" the calling rank trains the model alone."""
    out, checkpoint = run.model_dir(name), run.checkpoint(name)
    together = dist is not None and run.config.run.parallel == "data"

    def status() -> tuple[str, bool]:
        if not checkpoint.exists():
            return "", False
        state = read_checkpoint(checkpoint)
        if state.get("finished"):
            return f"{name}: already trained ({state['stop_reason']}), keeping {checkpoint}", True
        if not resume:
            raise EkdError(f"{checkpoint} is from an interrupted run; pass --resume to continue it")
        return f"{name}: resuming from epoch {state['epoch']}", False

    message, finished = on_main(dist, status) if together else status()  # type: ignore[arg-type]
    if message:
        say(run, message)
    if finished:
        return
    say(run, f"{name}: {model.kind}, {count_parameters(model):,} parameters, {len(train_ids)} training "
             f"conformations" + (f", on {dist.world_size} ranks" if together else ""))  # type: ignore[union-attr]
    graph = graph if graph is not None else run.graph(model.cutoff)
    if together:
        trainer: Trainer = DistributedTrainer(model, graph, train_ids, run.split["val"], settings, out, seed, name,
                                              progress=run.progress and dist.is_main,  # type: ignore[union-attr]
                                              context=dist, holding=run.held)
    else:
        trainer = Trainer(model, graph, train_ids, run.split["val"], settings, out, seed, name,
                          progress=run.progress and (dist is None or dist.is_main))
        if dist is not None:  # models spread over ranks: stop when another rank failed
            trainer.after_epoch = dist.raise_if_peer_failed
    result = trainer.run(resume=True)
    say(run, f"{name}: {result.stop_reason}; best epoch {result.best_epoch}, "
             f"{result.conformations_per_second:.0f} conformations/s")


def teacher_checkpoints(run: RunDirectory) -> List[Path]:
    """Checkpoints of every teacher this run uses, refusing to go on with unfinished ones."""
    paths = []
    for k in run.config.teachers.indices():
        path = run.checkpoint(teacher_name(k))
        if not path.exists() or not read_checkpoint(path).get("finished"):
            raise EkdError(f"{teacher_name(k)} is not trained yet ({path}); run the 'teachers' stage first")
        paths.append(path)
    return paths


def say(run: RunDirectory, message: str) -> None:
    """Log a line: rank 0 prints it; other ranks print theirs only when they train models alone."""
    run.log.append(message)
    if run.rank == 0:
        print(message, flush=True)
    elif run.config.run.parallel == "teachers":
        print(f"[rank {run.rank}] {message}", flush=True)


def mine(run: RunDirectory, dist: Optional[Context], k: int) -> bool:
    """Whether this process trains the k-th model of a stage (all do, unless parallel = "teachers")."""
    return dist is None or run.config.run.parallel == "data" or k % dist.world_size == dist.rank


def on_main(dist: Optional[Context], work: Callable[[], Any]) -> Any:
    """`work()` done by rank 0 only, its result given to every rank; if it raises, every rank
    stops (RankFailed naming rank 0). Without torchrun, simply `work()`."""
    if dist is None:
        return work()
    result, error = None, None
    if dist.is_main:
        try:
            result = work()
        except Exception as err:
            error = err
    dist.agree(error)
    return dist.broadcast(result)


def adopt_teachers(source: Path, config: RunConfig, out: Path) -> None:
    """Copy another run's finished teachers (and labels) into `out`, if that run used the same
    data, split, references and teacher settings; the label and summary stages check hashes.
    With `[teachers] subset` only those teachers are copied, and the labels (of other teachers)
    are made again."""
    theirs, ours = RunLayout(Path(source)), RunLayout(Path(out))
    saved_path = theirs.config_path
    if not saved_path.exists():
        raise EkdError(f"--teachers-from {source}: not a run directory (no config.toml)")
    saved, current = tomllib.loads(saved_path.read_text()), tomllib.loads(config_to_toml(config))
    for table in ("data", "split", "references", "teachers"):
        if _without_subset(saved.get(table)) != _without_subset(current.get(table)):
            raise EkdError(f"--teachers-from {source}: its [{table}] differs from this config's; its teachers "
                           "would not be the ones this run asks for")
    if ours.teachers_dir.exists():
        raise EkdError(f"--teachers-from: {out} already has teachers")
    for k in config.teachers.indices():
        if not theirs.checkpoint(teacher_name(k)).exists():
            raise EkdError(f"--teachers-from {source}: it has no {teacher_name(k)}")
        shutil.copytree(theirs.model_dir(teacher_name(k)), ours.model_dir(teacher_name(k)))
    if saved.get("teachers", {}).get("subset", []) == current["teachers"].get("subset", []):
        for path in ("labels_path", "augmented_path"):  # the stages check they belong to this run
            if getattr(theirs, path).exists():
                shutil.copy2(getattr(theirs, path), getattr(ours, path))
    print(f"reusing the teachers of {source}", flush=True)


def _without_subset(table: Any) -> Any:
    """A config table without `subset`: runs that use different teachers of one pool share it."""
    return {k: v for k, v in table.items() if k != "subset"} if isinstance(table, dict) else table


def run_stages(config: RunConfig, out: Path, stage: str, resume: bool, progress: bool = True,
               dist: Optional[Context] = None) -> RunDirectory:
    """Run the requested stage(s) of the method in `out`; always ends with a fresh summary
    (written by rank 0 under torchrun)."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(config.run.threads or max(1, cores // (dist.local_world_size if dist else 1)))
    run = open_run(out, config, progress) if dist is None else open_run_distributed(out, config, progress, dist)
    if run.rank == 0:
        for line in run.log:
            print(line, flush=True)
    if stage in ("teachers", "all"):
        train_teachers(run, resume, dist)
    if stage in ("label", "all"):
        label_data(run, resume, dist)
    if stage in ("augment", "all"):
        augment_data(run, resume, dist)
    if stage in ("student", "all"):
        train_student(run, resume, dist)
    if run.rank != 0:
        return run
    whole = run if run.held.full else open_run(out, config, progress)  # the summary evaluates all data
    calibrate_student(whole)
    table = write_summary(whole)
    print(table, flush=True)
    return run


def open_run_distributed(out: Path, config: RunConfig, progress: bool, dist: Context) -> RunDirectory:
    """Rank 0 opens the run directory (writing config, split and references), then the other
    ranks read it. With parallel = "data" an HDF5 data set is read in shards."""
    shard = (dist.rank, dist.world_size) if config.run.parallel == "data" else None
    run, error = None, None
    if dist.is_main:
        try:
            run = open_run(out, config, progress, shard=shard)
        except Exception as err:
            error = err
    dist.agree(error)
    if not dist.is_main:
        try:
            run = open_run(out, config, False, write=False, shard=shard)
        except Exception as err:
            error = err
    dist.agree(error)
    assert run is not None
    run.rank = dist.rank
    return run
