"""The metadata stored in every exported file (`ekd.json` in `_extra_files`, CONTRACT.md §3).

`Metadata` names every key once: the exporter writes its fields, every Python reader gets them
back as attributes (the C++ reader is `pair_style/`).
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import torch

import ekd
from ekd.errors import ModelFileError
from ekd.models import Ensemble, Potential
from ekd.models.operators import uses_ekd_operators
from ekd.models.potential import has_uncertainty

from .module import exchange_features

METADATA_NAME = "ekd.json"
FORMAT = "ekd-potential"
FORMAT_VERSION = 3   # the newest this ekd reads; 2 added atom_uncertainty (CONTRACT.md §2c), 3 ekd's operators (§2e)


@dataclass(frozen=True)
class Metadata:
    """What an exported file says about its model (CONTRACT.md §3 gives each key's meaning)."""

    model_kind: str
    elements: List[str]
    cutoff: float
    dtype: str
    num_interactions: int = 1
    receptive_field: float = 0.0
    energy_unit: str = "eV"
    length_unit: str = "Angstrom"
    min_distance: float = 0.0               # absent in the oldest files: no close-contact check
    reference_energies: Dict[str, float] = field(default_factory=dict)
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    members: int = 1
    exchange_features: List[int] = field(default_factory=list)   # absent in older files: no layer()
    atom_uncertainty: bool = False          # forward_with_uncertainty (§2c); absent before version 2
    uncertainty_scale: float = 1.0          # calibration already applied inside the file (information)
    provenance: Dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def is_ensemble(self) -> bool:
        return self.model_kind == "ensemble"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        head = {"format": fields.pop("format"), "format_version": fields.pop("format_version")}
        return json.dumps({**head, **fields})

    @classmethod
    def from_json(cls, text: str | bytes, path: Path) -> "Metadata":
        """The metadata of the file at `path`, checked; errors name the file and the key."""
        if not text:
            raise ModelFileError(f"{path}: a TorchScript file but not an ekd model (no {METADATA_NAME})")
        if len(text) > MAX_METADATA_BYTES:
            raise ModelFileError(f"{path}: {METADATA_NAME} has {len(text)} bytes, more than ekd metadata ever "
                                 f"holds ({MAX_METADATA_BYTES} at most)")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelFileError(f"{path}: {METADATA_NAME} is not valid JSON ({err})") from None
        except UnicodeDecodeError as err:
            raise ModelFileError(f"{path}: {METADATA_NAME} is not UTF-8 text ({err.reason} at byte {err.start})") \
                from None
        except RecursionError:
            raise ModelFileError(f"{path}: {METADATA_NAME} is nested too deeply to be ekd metadata") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not an ekd model ({METADATA_NAME} has no format '{FORMAT}')")
        version = raw.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ModelFileError(f"{path}: {METADATA_NAME}: key format_version must be an integer, got {_short(version)}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path}: format version {raw['format_version']} is newer than this ekd "
                                 f"reads ({FORMAT_VERSION}); upgrade ekd")
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = [f.name for f in known.values()
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in raw]
        if missing:
            raise ModelFileError(f"{path}: {METADATA_NAME} lacks the key(s) {', '.join(missing)}")
        # Keys a newer writer added are ignored, as the pair style ignores them.
        values = {k: v for k, v in raw.items() if k in known}
        try:
            metadata = cls(**values)
            _check_types(metadata)
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: {METADATA_NAME}: {err}") from None
        return metadata


# Real metadata hold a few kB (an ensemble's provenance included); the pair style has the same limit.
MAX_METADATA_BYTES = 1 << 20
# Bounds far beyond any real model, so a damaged file cannot ask for a graph that fills the memory
# (the pair style checks the same ones).
MAX_CUTOFF = 30.0
BOUNDS = [("cutoff", 1e-3, MAX_CUTOFF), ("num_interactions", 1, 64), ("members", 1, 4096),
          ("min_distance", 0.0, MAX_CUTOFF), ("receptive_field", 0.0, 64 * MAX_CUTOFF),
          ("uncertainty_scale", 1e-300, 1e300)]
def _short(value: Any) -> str:
    """A value as an error message quotes it: a 20 MB string or a deep list cut short."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 40
    shortener.maxlist = shortener.maxdict = 4
    shortener.maxlevel = 2
    return shortener.repr(value)


# The JSON type of every key (bool is not a number here, though Python says it is an int).
_NUMBER, _INTEGER = "a number", "an integer"
KEY_TYPES = {"model_kind": str, "elements": "list of str", "cutoff": _NUMBER, "dtype": str,
             "num_interactions": _INTEGER, "receptive_field": _NUMBER, "energy_unit": str, "length_unit": str,
             "min_distance": _NUMBER, "reference_energies": dict, "hyperparameters": dict, "members": _INTEGER,
             "exchange_features": "list of int", "atom_uncertainty": bool, "uncertainty_scale": _NUMBER,
             "provenance": dict, "format": str, "format_version": _INTEGER}


def _has_type(value: Any, expected: Any) -> bool:
    if expected == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "list of str":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected == "list of int":
        return isinstance(value, list) and all(_has_type(v, _INTEGER) for v in value)
    return isinstance(value, expected)


def _check_types(metadata: Metadata) -> None:
    """Refuse values of the wrong type or range, naming the key (a str where a number belongs, ...)."""
    for key, expected in KEY_TYPES.items():
        value = getattr(metadata, key)
        if not _has_type(value, expected):
            name = expected if isinstance(expected, str) else f"a {expected.__name__}"
            raise ValueError(f"key {key} must be {name}, got {_short(value)}")
    if metadata.dtype not in ("float32", "float64"):
        raise ValueError(f"key dtype must be float32 or float64, got {_short(metadata.dtype)}")
    for key, least, most in BOUNDS:
        value = getattr(metadata, key)
        if not least <= value <= most:  # NaN fails too
            raise ValueError(f"key {key} must be from {least} to {most}, got {_short(value)}")
    if not metadata.min_distance <= metadata.cutoff:
        raise ValueError(f"key min_distance must be at most the cutoff, got {_short(metadata.min_distance)}")
    if not metadata.receptive_field <= metadata.num_interactions * metadata.cutoff * (1 + 1e-9):
        raise ValueError(f"key receptive_field must be at most num_interactions x cutoff, got "
                         f"{_short(metadata.receptive_field)}")
    if len(metadata.elements) > 118 or not all(1 <= len(symbol) <= 2 and symbol.isascii() and symbol.isalpha()
                                                         for symbol in metadata.elements):
        raise ValueError(f"key elements must list chemical symbols, got {_short(metadata.elements)}")


def make_metadata(model: Potential, dtype: torch.dtype, checkpoint_sha256: List[str],
                  min_distance: float) -> Metadata:
    from ase.data import chemical_symbols

    return Metadata(
        model_kind="ensemble" if isinstance(model, Ensemble) else model.kind,
        elements=[chemical_symbols[z] for z in model.elements],
        cutoff=float(model.cutoff),
        num_interactions=int(model.num_interactions),
        receptive_field=float(model.cutoff * model.num_interactions),
        dtype=str(dtype).replace("torch.", ""),
        min_distance=float(min_distance),
        reference_energies={chemical_symbols[z]: float(v) for z, v in zip(model.elements, model.reference_energies)},
        hyperparameters=model.hyperparameters(),
        members=len(model.members) if isinstance(model, Ensemble) else 1,
        exchange_features=exchange_features(model),
        atom_uncertainty=has_uncertainty(model),
        # the oldest version whose readers run the file: version 1 readers know no uncertainty,
        # version 2 readers have no ekd operators
        format_version=3 if uses_ekd_operators(model) else 2 if has_uncertainty(model) else 1,
        uncertainty_scale=float(model.uncertainty_head.scale) if has_uncertainty(model) else 1.0,
        provenance={"checkpoint_sha256": list(checkpoint_sha256), "ekd_version": ekd.__version__,
                    "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )
