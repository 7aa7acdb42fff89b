"""The run configuration: one TOML file, one dataclass per table, strict about unknown keys.

Every table and key is documented in `docs/config.md`; `python -m ekd.train --print-config`
prints the resolved configuration of a run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .data import DataSpec, SplitSpec
from .errors import ConfigError
from .models import config_class
from .training import TrainConfig

EMBEDDED_DATA = Path(__file__).parent / "embedded" / "chno_ccsdt.h5"
# `[data] path` names for the package's own data: version 1 (1400 conformations of 7 molecules)
# and version 2 (+ 50 CCSD(T) conformations active learning added, water/methanol dimers among them)
EMBEDDED_SETS = {"embedded": EMBEDDED_DATA, "embedded-v2": EMBEDDED_DATA.with_name("chno_ccsdt_v2.h5")}
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"


@dataclass
class RunSettings:
    """[run] seed: base seed of every random choice; dtype: float32 | float64 (training and
    inference); device: cpu | cuda; threads: torch intra-op threads (0 = all cores, shared
    among the processes of a node under torchrun; speed only, so a run may be resumed with
    another value); parallel: what the processes of a torchrun launch share out — "data"
    (every model trains on all processes with DistributedDataParallel) or "teachers" (each
    model trains whole in one process; teacher k on rank k mod world size). Speed only, like
    threads; see docs/distributed.md."""

    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0
    parallel: str = "data"


@dataclass
class ReferenceSettings:
    """[references] mode: fit (least squares on the training split) | fixed (use `values`);
    values: eV per element symbol, e.g. {H = -13.6, O = -2041.0}."""

    mode: str = "fit"
    values: Dict[str, float] = field(default_factory=dict)


@dataclass
class ModelChoice:
    """A model kind and its hyperparameters (the `model` sub-table)."""

    kind: str = "hipnn"
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TeachersSettings:
    """[teachers] count: ensemble size; kind / model: architecture of every teacher;
    members: optional per-teacher overrides [{kind, model, seed}], one per teacher;
    bootstrap: train each teacher on a bootstrap resample of the training split;
    subset: the indices (of the `count` described) of the teachers this run trains and labels
    with ([]: all); a study's variants form smaller ensembles from one pool of teachers this way;
    init_from: a run directory whose teachers' weights start these (same elements and
    architectures; active learning continues each round's teachers this way; "" = fresh);
    train: [teachers.train] (energies only: forces_weight and atom_energy_weight must be 0)."""

    count: int = 4
    kind: str = "hipnn"
    model: Dict[str, Any] = field(default_factory=dict)
    members: List[Dict[str, Any]] = field(default_factory=list)
    bootstrap: bool = False
    subset: List[int] = field(default_factory=list)
    init_from: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)

    def indices(self) -> List[int]:
        """The teachers this run uses: `subset`, or all `count`."""
        return list(self.subset) if self.subset else list(range(self.count))

    def member(self, k: int, run_seed: int) -> tuple[str, Dict[str, Any], int]:
        """Kind, hyperparameters and seed of teacher k."""
        override = self.members[k] if self.members else {}
        kind = override.get("kind", self.kind)
        hyper = {**(self.model if kind == self.kind else {}), **override.get("model", {})}
        return kind, hyper, int(override.get("seed", run_seed + k))


def _student_train() -> TrainConfig:
    # 0.3 beat 1.0 on MD17 ethanol (student force RMSE 541 vs 555 meV/Å, same teachers)
    return TrainConfig(forces_weight=0.3, uncertainty_weight=1.0)


@dataclass
class StudentSettings:
    """[student] kind / model: the student's architecture (the baseline uses the same);
    uncertainty_head: hidden width of the student's per-atom uncertainty head, which learns the
    teachers' force spread (hipnn students; 0: none; the baseline never has one);
    train: [student.train], with forces_weight > 0 (ensemble-mean forces) and optionally
    atom_energy_weight > 0 (ensemble-mean atomic energies)."""

    kind: str = "hipnn"
    model: Dict[str, Any] = field(default_factory=lambda: {
        "n_features": 32, "n_sensitivities": 16, "n_interactions": 2, "n_atom_layers": 2, "cutoff": 5.0,
        "soft_max": 4.5})
    uncertainty_head: int = 16
    train: TrainConfig = field(default_factory=_student_train)

    def architecture(self, uncertainty: bool) -> Dict[str, Any]:
        """The model hyperparameters: the student's (with its head) or the baseline's (without)."""
        return {**self.model, "uncertainty_head": self.uncertainty_head} if uncertainty and self.uncertainty_head \
            else dict(self.model)


@dataclass
class BaselineSettings:
    """[baseline] enabled: also train an energy-only model of the student's architecture and
    training settings (forces and atomic-energy weights set to 0), to show what distillation bought."""

    enabled: bool = True


@dataclass
class LabelSettings:
    """[labels] batch_size: conformations per batch while the teachers label the data."""

    batch_size: int = 256


@dataclass
class AugmentSettings:
    """[augment] conformations the reference never computed, labelled by the teachers for the
    student (the `augment` stage, `ekd.distill.augment`; off while both generators are 0):
    displaced: copies of every training conformation with Gaussian displacements of `amplitude`
    Å per Cartesian component; md_starts: trajectories of Langevin MD driven by the ensemble mean,
    each from a training conformation drawn at random, at each of `md_temperatures` (K), for
    `md_steps` steps of `md_timestep` fs with friction `md_friction` (1/fs), a frame kept every
    `md_every` steps; a trajectory ends where an atom's force spread passes `max_spread`;
    md_model: a model checkpoint (e.g. an earlier run's student) that drives the MD instead of
    the ensemble mean (the teachers still label the frames; relative to the config file).
    max_spread: eV/Å, conformations with an atom whose teachers' force spread is larger are
    dropped (the teachers disagree; 0 keeps all); budget: at most this many conformations
    (0: no limit; drawn at random when there are more); energies: "none" (the student learns the
    ensemble forces only there) or "ensemble" (also the ensemble-mean energy, as a reference
    energy)."""

    displaced: int = 0
    amplitude: float = 0.05
    md_starts: int = 0
    md_temperatures: List[float] = field(default_factory=lambda: [500.0])
    md_steps: int = 400
    md_timestep: float = 0.5
    md_friction: float = 0.02
    md_every: int = 20
    md_model: str = ""
    max_spread: float = 0.0
    budget: int = 0
    energies: str = "none"

    @property
    def enabled(self) -> bool:
        return self.displaced > 0 or self.md_starts > 0

    def check(self) -> None:
        for name in ("displaced", "md_starts", "md_steps", "md_every", "budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[augment] {name} must be >= 0, got {getattr(self, name)}")
        for name in ("amplitude", "md_timestep", "md_friction"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[augment] {name} must be positive, got {getattr(self, name)}")
        if self.max_spread < 0:
            raise ConfigError(f"[augment] max_spread must be >= 0 (0: keep all), got {self.max_spread}")
        numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in self.md_temperatures)
        if not numbers or (self.md_starts and (not self.md_temperatures or min(self.md_temperatures) <= 0)):
            raise ConfigError(f"[augment] md_temperatures must be positive kelvin, got {self.md_temperatures}")
        if self.md_starts and not 1 <= self.md_every <= self.md_steps:
            raise ConfigError(f"[augment] md_every must be in 1..md_steps ({self.md_steps}), got {self.md_every}")
        if self.md_model and not Path(self.md_model).is_file():
            raise ConfigError(f"[augment] md_model: no such file {self.md_model}")
        if self.energies not in ("none", "ensemble"):
            raise ConfigError(f"[augment] energies must be 'none' or 'ensemble', got {self.energies!r}")


ORACLES = ("ccsd(t)", "gfn2-xtb")  # and "ase:package.module.Class"


@dataclass
class LearnSettings:
    """[learn] active learning (`python -m ekd.learn`, docs/learn.md); ignored by `ekd.train`.
    rounds: rounds after round 0 (--rounds overrides). Sampling, with each round's student:
    Langevin MD at each of `temperatures` (K) of `md_starts` training molecules and of
    `cluster_starts` clusters of `cluster_size` training molecules (drawn from the groups named in
    `cluster_molecules`; [] = all) placed `cluster_contact` Å apart at their closest atoms;
    `md_steps` steps of `md_timestep` fs, friction `md_friction` (1/fs), a frame every `md_every`
    steps; and `box_starts` LAMMPS runs (pair_style ekd) per temperature of a periodic box of about
    `box_atoms` atoms of the molecules of `box_molecules` ([] = all groups) at `box_density` g/cm³,
    relaxed first for at most `box_relax_steps` conjugate-gradient steps (0: none), dumped every
    `box_every` steps (0: `md_every`), where each dumped frame gives a cluster carved
    around its most disagreed-on atom (its molecule and the closest whole molecules within
    `carve_radius` Å, `carve_molecules` in all).
    Selection: frames whose largest per-atom committee force deviation (the teachers', eV/Å) lies
    in (`threshold`, `threshold_max`] — beyond it the geometry is too far gone to teach anything —
    (for clusters carved from boxes (`threshold`, `carve_threshold_max`], 0: `threshold_max`: their
    molecules are whole by construction, and the teachers disagree most where the data lack close
    intermolecular contacts), and the last frame within it before a trajectory fails the docs/stability.md criterion; at
    most `per_trajectory` per trajectory and `budget` per round. A labelled conformation more than
    `max_excess_energy` eV/atom above its molecules' lowest training energies is not added (0: all
    are). Oracle: "ccsd(t)" (PySCF; oracle_options basis, frozen_core, forces, threads),
    "gfn2-xtb" (tblite) or "ase:package.module.Class" (oracle_options: its keyword arguments);
    before the first call it recomputes `oracle_check` training conformations, which must agree
    with the data within `oracle_tolerance` eV (same level of theory and units); `jobs`
    processes call it. Of the labelled frames that carry the oracle's forces, `md_test_fraction`
    are held out of training as a test set of MD-sampled frames (docs/learn.md)."""

    rounds: int = 2
    temperatures: List[float] = field(default_factory=lambda: [500.0])
    md_starts: int = 32
    cluster_starts: int = 0
    cluster_size: int = 2
    cluster_molecules: List[str] = field(default_factory=list)
    cluster_contact: float = 2.2
    box_starts: int = 0
    box_atoms: int = 300
    box_density: float = 0.9
    box_molecules: List[str] = field(default_factory=list)
    carve_radius: float = 3.5
    carve_molecules: int = 3
    box_every: int = 0
    box_relax_steps: int = 200
    md_steps: int = 2000
    md_timestep: float = 0.5
    md_friction: float = 0.01
    md_every: int = 10
    threshold: float = 0.1
    threshold_max: float = 3.0
    carve_threshold_max: float = 0.0
    max_excess_energy: float = 0.3
    per_trajectory: int = 2
    budget: int = 100
    oracle: str = "ccsd(t)"
    oracle_options: Dict[str, Any] = field(default_factory=dict)
    oracle_check: int = 3
    oracle_tolerance: float = 1e-3
    jobs: int = 1
    md_test_fraction: float = 0.1

    def check(self) -> None:
        if not 0 <= self.md_test_fraction <= 0.5:
            raise ConfigError(f"[learn] md_test_fraction must be in [0, 0.5] (the share of labelled frames with forces "
                              f"held out as a test set), got {self.md_test_fraction}")
        for name in ("rounds", "md_starts", "cluster_starts", "box_starts", "md_steps", "md_every", "per_trajectory",
                     "budget", "oracle_check", "jobs", "cluster_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[learn] {name} must be >= 0, got {getattr(self, name)}")
        for name in ("md_timestep", "md_friction", "cluster_contact", "oracle_tolerance", "box_atoms", "box_density",
                     "carve_radius", "carve_molecules"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[learn] {name} must be positive, got {getattr(self, name)}")
        if not self.md_starts and not self.cluster_starts:
            raise ConfigError("[learn] md_starts and cluster_starts are both 0: the molecular MD needs starts "
                              "(boxes come beside it)")
        if self.cluster_starts and self.cluster_size < 2:
            raise ConfigError(f"[learn] cluster_size must be at least 2, got {self.cluster_size}")
        numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in self.temperatures)
        if not self.temperatures or not numbers or min(self.temperatures) <= 0:
            raise ConfigError(f"[learn] temperatures must be positive kelvin, got {self.temperatures}")
        if not 1 <= self.md_every <= self.md_steps:
            raise ConfigError(f"[learn] md_every must be in 1..md_steps ({self.md_steps}), got {self.md_every}")
        if self.box_relax_steps < 0:
            raise ConfigError(f"[learn] box_relax_steps must be >= 0 (0: no relaxation), got {self.box_relax_steps}")
        if not 0 <= self.box_every <= self.md_steps:
            raise ConfigError(f"[learn] box_every must be in 0..md_steps ({self.md_steps}; 0: md_every), "
                              f"got {self.box_every}")
        if not 0 < self.threshold < self.threshold_max:
            raise ConfigError(f"[learn] need 0 < threshold < threshold_max (force deviations in eV/Å), got "
                              f"{self.threshold} and {self.threshold_max}")
        if self.carve_threshold_max and not self.carve_threshold_max > self.threshold:
            raise ConfigError(f"[learn] carve_threshold_max must be above threshold = {self.threshold} eV/Å (0: "
                              f"threshold_max), got {self.carve_threshold_max}")
        if self.max_excess_energy < 0:
            raise ConfigError(f"[learn] max_excess_energy must be >= 0 eV/atom (0: keep all), got {self.max_excess_energy}")
        if self.per_trajectory < 1 or self.budget < 1 or self.jobs < 1:
            raise ConfigError("[learn] per_trajectory, budget and jobs must be at least 1")
        if self.oracle not in ORACLES and not (self.oracle.startswith("ase:") and "." in self.oracle):
            raise ConfigError(f"[learn] oracle {self.oracle!r} is not known; known: {', '.join(ORACLES)} or "
                              "\"ase:package.module.Class\" (an ASE calculator)")

    @property
    def carved_threshold_max(self) -> float:
        """The window's upper bound for clusters carved from boxes."""
        return self.carve_threshold_max or self.threshold_max

    @property
    def box_frame_every(self) -> int:
        """Steps between a box's dumped frames."""
        return self.box_every or self.md_every


@dataclass
class RunConfig:
    """A whole EKD run."""

    data: DataSpec
    run: RunSettings = field(default_factory=RunSettings)
    split: SplitSpec = field(default_factory=SplitSpec)
    references: ReferenceSettings = field(default_factory=ReferenceSettings)
    teachers: TeachersSettings = field(default_factory=TeachersSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    learn: LearnSettings = field(default_factory=LearnSettings)
    description: str = ""

    def check(self) -> "RunConfig":
        if self.run.dtype not in ("float32", "float64"):
            raise ConfigError(f"[run] dtype must be float32 or float64, got {self.run.dtype!r}")
        if self.run.device not in ("cpu", "cuda"):
            raise ConfigError(f"[run] device must be cpu or cuda, got {self.run.device!r}")
        if self.run.parallel not in ("data", "teachers"):
            raise ConfigError(f"[run] parallel must be 'data' or 'teachers', got {self.run.parallel!r}")
        if self.references.mode not in ("fit", "fixed"):
            raise ConfigError(f"[references] mode must be 'fit' or 'fixed', got {self.references.mode!r}")
        if self.references.mode == "fixed" and not self.references.values:
            raise ConfigError("[references] mode = 'fixed' needs values = {element = eV, ...}")
        if self.references.mode == "fit" and self.references.values:
            raise ConfigError("[references] values are given but mode = 'fit' ignores them; "
                              "set mode = 'fixed' or remove values")
        self.split.check()
        if self.split.test_selection == "has_forces" and self.split.test_fraction not in (0.0, SplitSpec.test_fraction):
            raise ConfigError("[split] test_fraction conflicts with test_selection = 'has_forces' "
                              "(the test set is every conformation with forces); remove test_fraction")
        teachers = self.teachers
        if teachers.count < 1:
            raise ConfigError(f"[teachers] count must be at least 1, got {teachers.count}")
        if teachers.members and len(teachers.members) != teachers.count:
            raise ConfigError(f"[teachers] members lists {len(teachers.members)} teachers but count = "
                              f"{teachers.count}")
        bad = [k for k in teachers.subset if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < teachers.count]
        if bad or len(set(teachers.subset)) != len(teachers.subset):
            raise ConfigError(f"[teachers] subset must list distinct teacher indices in 0..{teachers.count - 1}, "
                              f"got {teachers.subset!r}")
        for k, member in enumerate(teachers.members):
            unknown = set(member) - {"kind", "model", "seed"}
            if unknown:
                raise ConfigError(f"[[teachers.members]] {k}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  "known: kind, model, seed")
        if teachers.train.forces_weight or teachers.train.atom_energy_weight:
            raise ConfigError("[teachers.train] forces_weight and atom_energy_weight must be 0: "
                              "teachers learn from energies only")
        if not teachers.train.energy_weight:
            raise ConfigError("[teachers.train] energy_weight must be positive")
        if teachers.train.uncertainty_weight:
            raise ConfigError("[teachers.train] uncertainty_weight must be 0: teachers have no uncertainty head "
                              "(their spread is the ensemble's)")
        student = self.student
        if "uncertainty_head" in student.model:
            raise ConfigError("[student] model: give uncertainty_head in [student], not in model")
        if student.uncertainty_head < 0:
            raise ConfigError(f"[student] uncertainty_head must be >= 0 (0: none), got {student.uncertainty_head}")
        if student.uncertainty_head and student.kind != "hipnn":
            raise ConfigError(f"[student] uncertainty_head: only hipnn students have an uncertainty head; set "
                              f"uncertainty_head = 0 for a {student.kind} student")
        if self.student.train.forces_weight <= 0 and self.student.train.atom_energy_weight <= 0:
            raise ConfigError("[student.train] forces_weight and atom_energy_weight are both 0: the student "
                              "would learn nothing from the teachers")
        self.augment.check()
        self.learn.check()
        if not all(isinstance(p, str) for p in self.data.additions):
            raise ConfigError(f"[data] additions must be a list of file paths, got {self.data.additions!r}")
        if not (isinstance(self.data.added_weight, (int, float)) and 0 < self.data.added_weight <= 1e3):
            raise ConfigError(f"[data] added_weight must be a number in (0, 1000] (the loss weight of conformations "
                              f"active learning added, relative to the original data's 1), got {self.data.added_weight!r}")
        teachers.train.check("teachers.train")
        self.student.train.check("student.train")
        for k in range(teachers.count):
            kind, hyper, _ = teachers.member(k, self.run.seed)
            if "uncertainty_head" in hyper:
                raise ConfigError(f"teacher {k}: uncertainty_head: teachers have no uncertainty head (their "
                                  "members' spread is the ensemble's uncertainty)")
            _check_hyperparameters(kind, hyper, f"teacher {k}")
        _check_hyperparameters(self.student.kind, self.student.architecture(uncertainty=True), "student")
        return self


def _check_hyperparameters(kind: str, hyper: Dict[str, Any], where: str) -> None:
    cls = config_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyper) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {kind} hyperparameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        cls(**hyper).check()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


# ---- reading and writing ------------------------------------------------------------------------

def _from_table(base: Any, table: Dict[str, Any], where: str) -> Any:
    """`base` (a dataclass instance holding the defaults) updated from a TOML table, refusing
    unknown keys and wrong types. Sub-tables update the default sub-dataclass; free-form
    tables (`model`) update the default dictionary key by key."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table")
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(table) - fields)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {place}; known: {', '.join(sorted(fields))}")
    values: Dict[str, Any] = {}
    for name, value in table.items():
        default = getattr(base, name)
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            values[name] = _from_table(default, value, key)
        elif isinstance(default, dict) and name == "model":
            values[name] = {**default, **_coerce(value, default, key)}
        else:
            values[name] = _coerce(value, default, key)
    return dataclasses.replace(base, **values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where} must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def config_from_dict(raw: Dict[str, Any], source: str = "<dict>") -> RunConfig:
    """A checked RunConfig from a parsed TOML document."""
    raw = dict(raw)
    data_table = raw.pop("data", None)
    if data_table is None:
        raise ConfigError(f"{source}: the [data] table is missing (at least: path = \"...\")")
    if "path" not in data_table:
        raise ConfigError(f"{source}: [data] needs path")
    data = _from_table(DataSpec(path=""), data_table, "data")
    return _from_table(RunConfig(data=data), raw, "").check()


def load_config(path: Optional[Path]) -> RunConfig:
    """Read a TOML run config; None gives the default run on the embedded data set."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    data = raw.get("data", {})
    if isinstance(data, dict) and data.get("path") in EMBEDDED_SETS:
        data["path"] = str(EMBEDDED_SETS[data["path"]])
    elif isinstance(data, dict) and "path" in data and not Path(data["path"]).is_absolute():
        data["path"] = str((path.parent / data["path"]).resolve())
    if isinstance(data, dict) and isinstance(data.get("additions"), list):
        data["additions"] = [_beside(path, p) for p in data["additions"]]
    teachers = raw.get("teachers", {})
    if isinstance(teachers, dict) and isinstance(teachers.get("init_from"), str) and teachers["init_from"]:
        teachers["init_from"] = _beside(path, teachers["init_from"])
    augment = raw.get("augment", {})
    if isinstance(augment, dict) and isinstance(augment.get("md_model"), str) and augment["md_model"] \
            and not Path(augment["md_model"]).is_absolute():
        augment["md_model"] = str((path.parent / augment["md_model"]).resolve())
    return config_from_dict(raw, str(path))


def _beside(config_path: Path, value: object) -> object:
    """A path of the config, relative to the config file's folder (other values unchanged)."""
    if not isinstance(value, str) or Path(value).is_absolute():
        return value
    return str((config_path.parent / value).resolve())


def config_to_toml(config: RunConfig) -> str:
    """The resolved config as TOML (written to the run directory)."""
    return _toml_tables(dataclasses.asdict(config))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else _toml_value(key)


def _toml_tables(tree: Dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in tree.items() if not (isinstance(v, dict) and _is_table(k, prefix))}
    tables = {k: v for k, v in tree.items() if k not in scalars}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    out = ""
    if prefix and lines:
        out += f"[{prefix}]\n"
    if lines:
        out += "\n".join(lines) + "\n\n"
    for k, v in tables.items():
        out += _toml_tables(v, f"{prefix}.{k}" if prefix else k)
    return out


def _is_table(key: str, prefix: str) -> bool:
    """Dataclass sub-tables become [tables]; free-form dicts (model, values) stay inline."""
    return not (key in ("model", "values", "oracle_options") or (prefix.endswith("model")))
