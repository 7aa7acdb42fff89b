"""Build models by name from plain dictionaries, and rebuild them from a saved spec.

A model *spec* is everything needed to recreate a model without its weights:
`{"kind", "elements", "hyperparameters", "reference_energies"}`, and `"core_repulsion"` (the
onsets of `repulsion.py`, Å per pair of elements) when the model has that floor. Checkpoints store the spec
next to the state dict, so a checkpoint is readable without the config that made it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from torch import nn

from ..errors import ConfigError
from .ensemble import Ensemble
from .potential import Potential


@dataclass(frozen=True)
class ModelKind:
    """Where a model kind's classes live: its module, model class and hyperparameter dataclass."""

    module: str
    model_class: str
    config_class: str

    def classes(self) -> Tuple[type, type]:
        module = importlib.import_module(self.module, __package__)
        return getattr(module, self.model_class), getattr(module, self.config_class)


# The one table of model kinds: a new kind is one line here. Modules are imported on first
# use (importing e3nn takes about a second).
KINDS: Dict[str, ModelKind] = {
    "hipnn": ModelKind(".hipnn", "HIPNN", "HIPNNConfig"),
    "equivariant": ModelKind(".equivariant", "EquivariantPotential", "EquivariantConfig"),
}


def _kind(kind: str) -> ModelKind:
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def config_class(kind: str) -> type:
    """The hyperparameter dataclass of a model kind."""
    return _kind(kind).classes()[1]


def _config(cls: type, hyperparameters: Dict[str, Any], kind: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise ConfigError(f"unknown {kind} hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        config = cls(**hyperparameters)
        config.check()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{kind} hyperparameters: {err}") from None
    return config


def build_model(kind: str, elements: List[int], hyperparameters: Dict[str, Any]) -> Potential:
    """A freshly initialised model of `kind` for `elements` (atomic numbers)."""
    model_class, hyperparameter_class = _kind(kind).classes()
    return model_class(list(elements), _config(hyperparameter_class, dict(hyperparameters), kind))


def model_spec(model: Potential) -> Dict[str, Any]:
    """Everything but the weights."""
    if isinstance(model, Ensemble):
        return {"kind": "ensemble", "elements": model.elements,
                "members": [model_spec(m) for m in model.members]}
    spec = {"kind": model.kind, "elements": list(model.elements), "hyperparameters": model.hyperparameters(),
            "reference_energies": list(model.reference_energies)}
    if model.core_repulsion.enabled:
        spec["core_repulsion"] = model.core_repulsion.onsets()
    return spec


def model_from_spec(spec: Dict[str, Any]) -> Potential:
    """An untrained model with the architecture and reference energies of `spec`."""
    if spec["kind"] == "ensemble":
        return Ensemble([model_from_spec(m) for m in spec["members"]])
    model = build_model(spec["kind"], spec["elements"], spec["hyperparameters"])
    model.reference_energies = [float(v) for v in spec["reference_energies"]]
    if "core_repulsion" in spec:
        try:
            model.core_repulsion.set_onsets(spec["core_repulsion"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model spec core_repulsion: {err}") from None
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
