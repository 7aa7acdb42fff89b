"""The metadata stored in every exported file (`ekd.json` in `_extra_files`, CONTRACT.md §3)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

import ekd
from ekd.errors import ModelFileError
from ekd.models import Ensemble, Potential

from .module import exchange_features

METADATA_NAME = "ekd.json"
FORMAT = "ekd-potential"
FORMAT_VERSION = 1


def make_metadata(model: Potential, dtype: torch.dtype, checkpoint_sha256: List[str],
                  min_distance: float) -> Dict[str, Any]:
    from ase.data import chemical_symbols

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_kind": "ensemble" if isinstance(model, Ensemble) else model.kind,
        "elements": [chemical_symbols[z] for z in model.elements],
        "cutoff": float(model.cutoff),
        "num_interactions": int(model.num_interactions),
        "receptive_field": float(model.cutoff * model.num_interactions),
        "energy_unit": "eV",
        "length_unit": "Angstrom",
        "dtype": str(dtype).replace("torch.", ""),
        "min_distance": float(min_distance),
        "reference_energies": {chemical_symbols[z]: float(v)
                               for z, v in zip(model.elements, model.reference_energies)},
        "hyperparameters": model.hyperparameters(),
        "members": len(model.members) if isinstance(model, Ensemble) else 1,
        "exchange_features": exchange_features(model),
        "provenance": {"checkpoint_sha256": list(checkpoint_sha256), "ekd_version": ekd.__version__,
                       "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
    }


def read_metadata(path: Path) -> Dict[str, Any]:
    """Metadata of an exported file, checked; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    extra = {METADATA_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:  # torch raises RuntimeError or ValueError for non-TorchScript files
        raise ModelFileError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
    del module
    return parse_metadata(extra[METADATA_NAME], path)


def parse_metadata(text: str | bytes, path: Path) -> Dict[str, Any]:
    if not text:
        raise ModelFileError(f"{path}: a TorchScript file but not an ekd model (no {METADATA_NAME})")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: {METADATA_NAME} is not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an ekd model ({METADATA_NAME} has no format '{FORMAT}')")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {meta['format_version']} is newer than this ekd "
                             f"reads ({FORMAT_VERSION}); upgrade ekd")
    return meta
