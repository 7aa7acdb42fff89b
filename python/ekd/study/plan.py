"""What a study runs: one `python -m ekd.train` per seed and per student variant."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..config import RunConfig, config_from_dict, config_to_toml
from ..errors import ConfigError

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
