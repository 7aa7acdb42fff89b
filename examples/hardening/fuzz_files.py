"""Fuzz every kind of file ekd reads from other people: damaged copies of valid files must load
cleanly or be refused with ekd's own error naming the file, never crash, hang, leak another
exception type or load non-finite values.

    python examples/hardening/fuzz_files.py TARGET --model FILE [--run DIR] [--cases N] [--seed S] [--json OUT]

TARGET (each damages valid files its own way; see the `Target` subclasses below):
    lammps-metadata   ekd.json of an exported model (bytes flipped, cut short, keys removed,
                      wrong types, extreme numbers, nesting up to a million deep, megabytes of text),
                      loaded by `pair_style ekd` in LAMMPS (in-process, through the lammps module)
    lammps-archive    the TorchScript archive around it (raw bytes flipped or cut, one record's
                      bytes flipped with a valid zip checksum, a record dropped, weights replaced
                      by random bytes), loaded by `pair_style ekd`, energy and forces computed (`run 0`)
    python-metadata   as lammps-metadata, read by `ekd.export.read_metadata`
    python-archive    as lammps-archive, loaded by `ekd.export.load_exported` and evaluated
    data              small HDF5 (ANI layout), extended XYZ and npz data files (raw bytes, text
                      tokens, datasets of other shapes, types, NaN, object arrays), `read_data`
    checkpoint        a run's student checkpoint (bytes, records), `ekd.models.io.read_checkpoint`
    labels            a run's labels.h5 (bytes, datasets of other shapes, types, NaN), `read_labels`

Every case runs in a worker process; a worker that dies counts its case as a crash and a new
worker continues with the next case, so one run reports every crash. A case that takes longer
than --timeout seconds counts as a hang, one that raises the worker's peak memory by more than
--max-memory MB as a memory failure. Cases are seeded: `--seed S --first K --cases 1`
replays case K. The exit code is 1 if any case crashed, hung or ended in an unclear way.

The test suite runs a few thousand cases over all targets (tests/test_hardening.py); longer
runs, e.g. `--cases 100000`, are for this script.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

WRONG_VALUES = ["five", None, [], {}, True, 1e308, -1, 0, -1e-300, [1, "H"], {"a": [1, {"b": None}]},
                float("nan"), float("inf"), 2**63, "H" * 1000, ["H"] * 10000]
SETUP_SECONDS = 900.0      # a worker's imports and valid files, on a loaded machine
CLEAR = "refused"          # ekd's own error, naming the file
LOADED = "loaded"


# ---- damage ---------------------------------------------------------------------------------------

def flip_bytes(raw: bytes, rng: np.random.Generator) -> bytes:
    """1-8 random bytes set to random values."""
    data = bytearray(raw)
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    return bytes(data)


def cut_short(raw: bytes, rng: np.random.Generator) -> bytes:
    return raw[:int(rng.integers(len(raw)))]


def damage_json(text: str, rng: np.random.Generator) -> bytes:
    """One damage of the metadata's JSON text, of one of eight kinds (raw bytes: not always UTF-8)."""
    kind = int(rng.integers(8))
    if kind == 0:
        return flip_bytes(text.encode(), rng)
    if kind == 1:
        return cut_short(text.encode(), rng)
    meta = json.loads(text)
    key = str(rng.choice(sorted(meta)))
    if kind == 2:
        del meta[key]
    elif kind == 3:
        meta[key] = WRONG_VALUES[int(rng.integers(len(WRONG_VALUES)))]
    elif kind == 4:  # nesting far deeper than any reader should follow
        depth = int(10 ** rng.uniform(1, 6))
        return json.dumps({**meta, key: "NESTED"}).replace('"NESTED"', "[" * depth + "]" * depth).encode()
    elif kind == 5:  # a value far larger than any metadata
        meta[key] = "x" * 1_100_000 if rng.random() < 0.5 else list(range(200_000))
    elif kind == 6:  # numbers at the edges of what a double holds
        meta[key] = float(rng.choice([1e308, -1e308, 5e-324, 0.0, -0.0, 2.0**53 + 1]))
    else:  # a key given twice, the later one of the wrong type (JSON allows it; readers differ)
        return (json.dumps(meta)[:-1] + f', "{key}": "twice"}}').encode()
    return json.dumps(meta).encode()


def rezip(raw: bytes, change: Callable[[str, bytes], Optional[bytes]]) -> bytes:
    """The zip archive `raw` with each record's bytes passed through `change` (None drops it);
    the new archive's checksums are valid, so damage reaches the readers behind the zip layer."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data, compress_type=info.compress_type)
    return out.getvalue()


def damage_archive(raw: bytes, rng: np.random.Generator) -> bytes:
    """One damage of a zip archive (a TorchScript file or a torch checkpoint), of one of five kinds."""
    kind = int(rng.integers(5))
    if kind == 0:
        return flip_bytes(raw, rng)
    if kind == 1:
        return cut_short(raw, rng)
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    victim = str(rng.choice(names))
    if kind == 2:  # one record's bytes damaged behind a valid checksum
        return rezip(raw, lambda name, data: flip_bytes(data, rng) if name == victim and data else data)
    if kind == 3:  # one record missing
        return rezip(raw, lambda name, data: None if name == victim else data)
    weights = [n for n in names if re.search(r"/data/\d+$", n)] or names
    victim = str(rng.choice(weights))  # weights of random bytes: any float, NaN and infinity included
    return rezip(raw, lambda name, data: rng.bytes(len(data)) if name == victim else data)


# ---- targets ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str            # loaded | refused | unclear (an exception that is not ekd's clear error)
    detail: str = ""


class Target:
    """Builds damaged files from valid ones and loads each the way ekd would."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.model, self.folder = model, folder

    def case(self, rng: np.random.Generator) -> Outcome:
        raise NotImplementedError


def _metadata_text(model: Path) -> str:
    from ekd.export import read_metadata

    return read_metadata(model).to_json()


def with_metadata(raw: bytes, metadata: bytes) -> bytes:
    """The exported file `raw` with its ekd.json replaced (rewriting the zip is faster than
    torch.jit.save, and the archive stays one torch reads)."""
    from ekd.export import METADATA_NAME

    return rezip(raw, lambda name, data: metadata if name.endswith("/extra/" + METADATA_NAME) else data)


class LammpsTarget(Target):
    """One LAMMPS instance; every case gives `pair_style ekd FILE` and computes energy and forces
    (`run 0`: a damaged model's huge but finite forces would otherwise lose atoms, LAMMPS's own
    clean error about the dynamics, not about the file)."""

    def __init__(self, model: Path, folder: Path) -> None:
        super().__init__(model, folder)
        from ekd.export import read_metadata
        from ekd.plugin import lammps

        self.elements = read_metadata(model).elements
        self.lmp = lammps(cmdargs=["-screen", "none", "-log", "none"])
        self.count = 0

    def reset(self) -> None:
        """The same eight atoms for every case, whatever the last case left behind."""
        n = len(self.elements)
        setup = ["clear", "units metal", "atom_style atomic", "region box block 0 12 0 12 0 12",
                 f"create_box {n} box", "mass * 1.0", "neighbor 1.0 bin"]
        setup += [f"create_atoms {k % n + 1} single {2 + k % 3} {2 + 1.1 * k} {3 + (k % 2)}" for k in range(8)]
        setup += ["velocity all create 300 1", "fix step all nve", "timestep 0.0005"]
        self.lmp.commands_string("\n".join(setup))

    @property
    def path(self) -> Path:
        # a new name per case: the pair style keeps a loaded file and does not read the same path twice
        return self.folder / f"damaged_{self.count}.pt"

    def load(self) -> Outcome:
        try:
            return self._load()
        finally:
            self.path.unlink(missing_ok=True)
            self.count += 1

    def _load(self) -> Outcome:
        self.reset()
        try:
            self.lmp.command(f"pair_style ekd {self.path}")
            self.lmp.command(f"pair_coeff * * {' '.join(self.elements)}")
            self.lmp.command("run 0")
        except Exception as err:  # the lammps module raises Exception carrying LAMMPS's ERROR line
            message = str(err)
            clear = message.startswith("ERROR") and ("pair_style ekd" in message or str(self.path) in message)
            return Outcome(CLEAR if clear else "unclear", message.splitlines()[0][:300])
        energy = self.lmp.get_thermo("pe")
        if not np.isfinite(energy):
            return Outcome("unclear", f"loaded and ran, but the energy is {energy}")
        return Outcome(LOADED)


class LammpsMetadata(LammpsTarget):
    def __init__(self, model: Path, folder: Path) -> None:
        super().__init__(model, folder)
        self.raw, self.text = model.read_bytes(), _metadata_text(model)

    def case(self, rng: np.random.Generator) -> Outcome:
        self.path.write_bytes(with_metadata(self.raw, damage_json(self.text, rng)))
        return self.load()


class LammpsArchive(LammpsTarget):
    def case(self, rng: np.random.Generator) -> Outcome:
        self.path.write_bytes(damage_archive(self.model.read_bytes(), rng))
        return self.load()


class PythonTarget(Target):
    path_name = "damaged.pt"

    def load(self, path: Path) -> Outcome:
        from ekd.errors import EkdError

        try:
            self.read(path)
        except EkdError as err:
            return Outcome(CLEAR if str(path) in str(err) else "unclear", f"{type(err).__name__}: {err}"[:300])
        except Exception as err:
            return Outcome("unclear", f"{type(err).__name__}: {err}"[:300])
        return Outcome(LOADED)

    def read(self, path: Path) -> None:
        raise NotImplementedError


class PythonMetadata(PythonTarget):
    def __init__(self, model: Path, folder: Path) -> None:
        super().__init__(model, folder)
        self.raw, self.text = model.read_bytes(), _metadata_text(model)

    def case(self, rng: np.random.Generator) -> Outcome:
        path = self.folder / self.path_name
        path.write_bytes(with_metadata(self.raw, damage_json(self.text, rng)))
        return self.load(path)

    def read(self, path: Path) -> None:
        from ekd.export import read_metadata

        read_metadata(path)


class PythonArchive(PythonTarget):
    """Loaded and evaluated on a small molecule of the model's elements: finite energy or refused."""

    def case(self, rng: np.random.Generator) -> Outcome:
        path = self.folder / self.path_name
        path.write_bytes(damage_archive(self.model.read_bytes(), rng))
        return self.load(path)

    def read(self, path: Path) -> None:
        from ase import Atoms

        from ekd.calculator import EKDCalculator

        calculator = EKDCalculator(path, uncertainty=True)  # every method of the file: forward, members, uncertainty
        elements = calculator.model.metadata.elements
        atoms = Atoms([elements[k % len(elements)] for k in range(5)],
                      positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0], [0, 0, 1.3], [1.0, 1.0, 1.0]])
        atoms.calc = calculator
        energy = atoms.get_potential_energy()
        if not np.isfinite(energy) or not np.isfinite(atoms.get_forces()).all():
            raise RuntimeError(f"loaded and ran, but the energy is {energy}")


class Checkpoint(PythonTarget):
    path_name = "damaged.checkpoint.pt"

    def __init__(self, model: Path, folder: Path, checkpoint: Path) -> None:
        super().__init__(model, folder)
        self.raw = checkpoint.read_bytes()

    def case(self, rng: np.random.Generator) -> Outcome:
        path = self.folder / self.path_name
        path.write_bytes(damage_archive(self.raw, rng))
        return self.load(path)

    def read(self, path: Path) -> None:
        from ekd.models.io import model_from_checkpoint, read_checkpoint

        model_from_checkpoint(read_checkpoint(path))


class Data(PythonTarget):
    """Three small valid data files (ANI HDF5, extended XYZ, sGDML npz) of the embedded data's
    first conformations, damaged at the byte level or in their structure; read by `read_data`,
    which must return finite values or refuse."""

    def __init__(self, model: Path, folder: Path) -> None:
        super().__init__(model, folder)
        self.valid = write_valid_data(folder / "valid")

    def case(self, rng: np.random.Generator) -> Outcome:
        suffix = str(rng.choice(sorted(self.valid)))
        path = self.folder / f"damaged{suffix}"
        damage = {".h5": damage_hdf5, ".xyz": damage_extxyz, ".npz": damage_npz}[suffix]
        damage(self.valid[suffix], path, rng)
        return self.load(path)

    def read(self, path: Path) -> None:
        from ekd.data.readers import DataSpec, read_data

        data = read_data(DataSpec(path=str(path)))
        for name in ("positions", "energy"):
            values = getattr(data, name)
            if not np.isfinite(values).all():
                raise RuntimeError(f"read_data returned non-finite {name}")
        if data.species.min() < 1 or data.species.max() > 118:
            raise RuntimeError(f"read_data returned atomic numbers {data.species.min()}..{data.species.max()}")


def write_valid_data(stem: Path) -> Dict[str, Path]:
    """The same five conformations in the three layouts."""
    import h5py
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from ekd.config import DEFAULT_CONFIG, load_config
    from ekd.data.readers import read_data

    data = read_data(load_config(DEFAULT_CONFIG).data)
    first = [k for k in range(len(data)) if data.n_atoms[k] == data.n_atoms[0]][:5]
    x = np.stack([data.positions[data.offsets[k]:data.offsets[k + 1]] for k in first])
    z = data.species[data.offsets[first[0]]:data.offsets[first[0] + 1]]
    e = data.energy[first]
    f = np.random.default_rng(0).normal(size=x.shape)
    paths = {s: stem.with_suffix(s) for s in (".h5", ".xyz", ".npz")}
    with h5py.File(paths[".h5"], "w") as h5:
        group = h5.create_group("mol")
        group["coordinates"], group["species"] = x, np.array([str(s).encode() for s in Atoms(numbers=z).symbols])
        group["energies"] = e / 27.211386245988
    frames = []
    for k in range(len(e)):
        atoms = Atoms(numbers=z, positions=x[k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(e[k]), forces=f[k])
        frames.append(atoms)
    write(paths[".xyz"], frames, format="extxyz")
    np.savez(paths[".npz"], R=x, z=z, E=e, F=f, e_unit="eV")
    return paths


def damage_hdf5(valid: Path, path: Path, rng: np.random.Generator) -> None:
    """Bytes flipped or cut, or one dataset replaced by one of another shape, type or value."""
    import h5py

    kind = int(rng.integers(3))
    if kind < 2:
        raw = valid.read_bytes()
        path.write_bytes(flip_bytes(raw, rng) if kind == 0 else cut_short(raw, rng))
        return
    path.write_bytes(valid.read_bytes())
    with h5py.File(path, "r+") as h5:
        names: List[str] = []
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        name = str(rng.choice(names))
        old = h5[name][()]
        del h5[name]
        h5[name] = replacement(old, rng, strings=h5py.string_dtype())


def replacement(old: np.ndarray, rng: np.random.Generator, strings: object = None) -> np.ndarray:
    """A value where `old` was: another shape, type, NaN/infinite/huge entries, strings, nothing."""
    kind = int(rng.integers(7))
    if kind == 0:
        return np.asarray(old).reshape(-1)[:max(0, np.asarray(old).size - 1)]
    if kind == 1:
        return np.zeros((0,) + np.shape(old)[1:])
    if kind == 2 and np.asarray(old).dtype.kind == "f":
        bad = np.array(old, dtype=float)
        bad.flat[int(rng.integers(bad.size))] = rng.choice([np.nan, np.inf, -np.inf, 1e300])
        return bad
    if kind == 3:
        return np.array(["x"] * max(1, np.asarray(old).size), dtype=strings or "U1")
    if kind == 4:
        return rng.integers(-2**31, 2**31, size=np.shape(old) or (1,))
    if kind == 5:
        return np.asarray(old)[..., None]
    return np.float64(rng.normal())


def damage_extxyz(valid: Path, path: Path, rng: np.random.Generator) -> None:
    """Bytes flipped or cut, a line dropped or doubled, or a token replaced."""
    text = valid.read_text()
    kind = int(rng.integers(4))
    if kind == 0:
        path.write_bytes(flip_bytes(text.encode(), rng))
        return
    if kind == 1:
        path.write_text(text[:int(rng.integers(len(text)))])
        return
    lines = text.splitlines()
    k = int(rng.integers(len(lines)))
    if kind == 2:
        lines = lines[:k] + lines[k + 1:] if rng.random() < 0.5 else lines[:k + 1] + lines[k:]
    else:
        tokens = lines[k].split(" ")
        t = int(rng.integers(len(tokens)))
        tokens[t] = str(rng.choice(["nan", "inf", "-inf", "1e400", "X", "", "Xx", "0", "-1", "energy=",
                                    'Properties=species:S:1', "999999999999"]))
        lines[k] = " ".join(tokens)
    path.write_text("\n".join(lines) + "\n")


def damage_npz(valid: Path, path: Path, rng: np.random.Generator) -> None:
    """Bytes flipped or cut, or one array replaced (object arrays included: pickles, refused)."""
    kind = int(rng.integers(4))
    raw = valid.read_bytes()
    if kind < 2:
        path.write_bytes(flip_bytes(raw, rng) if kind == 0 else cut_short(raw, rng))
        return
    with np.load(valid) as archive:
        arrays = {name: archive[name] for name in archive.files}
    name = str(rng.choice(sorted(arrays)))
    arrays[name] = np.array([{"a": 1}, None], dtype=object) if kind == 2 else replacement(arrays[name], rng)
    with open(path, "wb") as handle:  # np.savez stores object arrays as pickles: allow_pickle must refuse them
        np.savez(handle, **arrays)


class LabelsFile(PythonTarget):
    """A run's labels.h5 (the teachers' forces and energies), damaged; `read_labels` must return
    finite labels or refuse."""

    path_name = "damaged_labels.h5"

    def __init__(self, model: Path, folder: Path, labels: Path) -> None:
        super().__init__(model, folder)
        self.valid = labels

    def case(self, rng: np.random.Generator) -> Outcome:
        path = self.folder / self.path_name
        damage_hdf5(self.valid, path, rng)
        return self.load(path)

    def read(self, path: Path) -> None:
        from ekd.distill.labels import read_labels

        labels = read_labels(path)
        for name in ("forces_mean", "forces_std", "atom_energy_mean", "energy_mean", "energy_std"):
            if not np.isfinite(getattr(labels, name)).all():
                raise RuntimeError(f"read_labels returned non-finite {name}")


TARGETS = ["lammps-metadata", "lammps-archive", "python-metadata", "python-archive", "data", "checkpoint",
           "labels"]


def make_target(name: str, model: Path, run: Optional[Path], folder: Path) -> Target:
    if name in ("checkpoint", "labels"):
        if run is None:
            raise SystemExit(f"target {name} needs --run DIR (a finished run directory)")
        if name == "labels":
            return LabelsFile(model, folder, run / "labels.h5")
        return Checkpoint(model, folder, run / "student" / "checkpoint.pt")
    kinds = {"lammps-metadata": LammpsMetadata, "lammps-archive": LammpsArchive,
             "python-metadata": PythonMetadata, "python-archive": PythonArchive, "data": Data}
    return kinds[name](model, folder)


# ---- running cases in workers -------------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    """Run cases first..first+cases-1, one JSON line per case on stdout, then 'done'."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ekd-fuzz-") as tmp:
        target = make_target(args.target, args.model, args.run, Path(tmp))
        for k in range(args.first, args.first + args.cases):
            print(json.dumps({"case": k, "start": True}), flush=True)
            before = _high_water_mb()
            outcome = target.case(np.random.default_rng([args.seed, k]))
            grown = _high_water_mb() - before  # the memory this case took beyond any case before it
            if grown > args.max_memory:
                outcome = Outcome("memory", f"took {grown:.0f} MB ({outcome.kind}: {outcome.detail})"[:300])
            print(json.dumps({"case": k, "kind": outcome.kind, "detail": outcome.detail, "grown_mb": grown}),
                  flush=True)
    print(json.dumps({"done": True}), flush=True)


def _high_water_mb() -> float:
    """This process's peak resident memory so far (VmHWM), MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024.0


@dataclass
class Report:
    target: str
    cases: int = 0
    kinds: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)     # the first words of each clear error
    failures: List[dict] = field(default_factory=list)     # crash, hang, unclear, memory: case and detail
    most_memory: Tuple[int, float] = (-1, 0.0)             # the case that raised a worker's peak most, MB

    def add(self, case: int, kind: str, detail: str, grown_mb: float = 0.0) -> None:
        if grown_mb > self.most_memory[1]:
            self.most_memory = (case, grown_mb)
        self.cases += 1
        self.kinds[kind] += 1
        if kind == CLEAR:
            self.refusals[_gist(detail)] += 1
        elif kind != LOADED:
            self.failures.append({"case": case, "kind": kind, "detail": detail})

    def as_dict(self) -> dict:
        return {"target": self.target, "cases": self.cases, "outcomes": dict(self.kinds),
                "refusals": dict(self.refusals.most_common()), "failures": self.failures,
                "most_memory": {"case": self.most_memory[0], "mb": round(self.most_memory[1], 1)}}


def _gist(message: str) -> str:
    """A refusal's kind: its message with paths, numbers and quoted values taken out."""
    message = re.sub(r"\S*/damaged\S*", "FILE", message)
    message = re.sub(r"'[^']*'|\"[^\"]*\"|\b\d[\d.e+-]*\b", "_", message)
    return message[:90]


def run_cases(args: argparse.Namespace) -> Report:
    """Cases in workers; a worker that dies or hangs is replaced after its case is recorded."""
    report, first, end = Report(args.target), args.first, args.first + args.cases
    started = time.monotonic()
    while first < end:
        first = one_worker(worker_command(args, first, end), args.timeout, end, report)
        if args.progress:
            print(f"  {args.target}: {report.cases}/{args.cases} cases, {dict(report.kinds)}, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return report


def worker_command(args: argparse.Namespace, first: int, end: int) -> List[str]:
    command = [sys.executable, __file__, args.target, "--worker", "--model", str(args.model), "--seed",
               str(args.seed), "--first", str(first), "--cases", str(end - first), "--max-memory", str(args.max_memory)]
    return command + (["--run", str(args.run)] if args.run else [])


def one_worker(command: List[str], timeout: float, end: int, report: Report) -> int:
    """Run a worker (its cases end before `end`) until it finishes or fails; the next case to run."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty worker never blocks on it
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        running, outcome = _follow(process, timeout, report)
        code = process.wait()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    if outcome == "done":
        return end
    if running is None:  # died or stalled outside a case (its set-up): not a finding about the files
        raise SystemExit(f"the fuzz worker failed outside any case (exit {code}):\n{errors[-3000:]}")
    detail = f"no answer in {timeout:g} s" if outcome == "hang" else \
        f"exit code {code}: {(errors.strip().splitlines() or [''])[-1][:300]}"
    report.add(running, outcome, detail)
    return running + 1


def _follow(process: subprocess.Popen, timeout: float, report: Report) -> Tuple[Optional[int], str]:
    """Record the worker's outcomes as they come; the case it was running when it stopped
    answering, and how it stopped: done | hang | crash."""
    running: Optional[int] = None
    for line in _lines(process, timeout, setup_timeout=SETUP_SECONDS):
        if line is None:
            process.kill()
            return running, "hang"
        message = json.loads(line)
        if message.get("done"):
            return None, "done"
        if message.get("start"):
            running = message["case"]
        else:
            report.add(message["case"], message["kind"], message["detail"], message.get("grown_mb", 0.0))
            running = None
    return running, "crash"


def _lines(process: subprocess.Popen, timeout: float, setup_timeout: float) -> Iterator[Optional[str]]:
    """The worker's stdout lines; None when none came for `timeout` seconds (`setup_timeout`
    before the first). Reads the pipe's bytes directly: a buffered reader could hold lines that
    `select` then waits for in vain."""
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    pending, wait = b"", setup_timeout
    while True:
        if not selector.select(wait):
            yield None
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        wait = timeout if lines else wait
        for line in lines:
            yield line.decode()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--model", type=Path, required=True, help="a valid file exported by python -m ekd.export")
    parser.add_argument("--run", type=Path, help="a finished run directory (targets checkpoint and labels: "
                        "its student/checkpoint.pt and labels.h5)")
    parser.add_argument("--cases", type=int, default=1000, help="how many damaged files (default 1000)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the damage (default 2026)")
    parser.add_argument("--first", type=int, default=0, help="index of the first case (to replay one)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    parser.add_argument("--max-memory", type=float, default=1000.0,
                        help="MB a case may add to a worker's peak memory before it counts as a failure (default 1000)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--progress", action="store_true", help="a line on stderr per worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    report = run_cases(args).as_dict()
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
