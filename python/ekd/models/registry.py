"""Build models by name from plain dictionaries, and rebuild them from a saved spec.

A model *spec* is everything needed to recreate a model without its weights:
`{"kind", "elements", "hyperparameters", "reference_energies"}`. Checkpoints store the spec
next to the state dict, so a checkpoint is readable without the config that made it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List

from torch import nn

from ..errors import ConfigError
from .ensemble import Ensemble
from .hipnn import HIPNN, HIPNNConfig
from .potential import Potential


def _build_hipnn(elements: List[int], hyperparameters: Dict[str, Any]) -> Potential:
    return HIPNN(elements, _config(HIPNNConfig, hyperparameters, "hipnn"))


def _build_equivariant(elements: List[int], hyperparameters: Dict[str, Any]) -> Potential:
    from .equivariant import EquivariantConfig, EquivariantPotential

    return EquivariantPotential(elements, _config(EquivariantConfig, hyperparameters, "equivariant"))


BUILDERS: Dict[str, Callable[[List[int], Dict[str, Any]], Potential]] = {
    "hipnn": _build_hipnn,
    "equivariant": _build_equivariant,
}


def config_class(kind: str) -> type:
    """The hyperparameter dataclass of a model kind."""
    if kind == "hipnn":
        return HIPNNConfig
    if kind == "equivariant":
        from .equivariant import EquivariantConfig

        return EquivariantConfig
    raise ConfigError(f"unknown model kind {kind!r}; known: {', '.join(BUILDERS)}")


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
    if kind not in BUILDERS:
        raise ConfigError(f"unknown model kind {kind!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[kind](list(elements), dict(hyperparameters))


def model_spec(model: Potential) -> Dict[str, Any]:
    """Everything but the weights."""
    if isinstance(model, Ensemble):
        return {"kind": "ensemble", "elements": model.elements,
                "members": [model_spec(m) for m in model.members]}
    return {"kind": model.kind, "elements": list(model.elements), "hyperparameters": model.hyperparameters(),
            "reference_energies": list(model.reference_energies)}


def model_from_spec(spec: Dict[str, Any]) -> Potential:
    """An untrained model with the architecture and reference energies of `spec`."""
    if spec["kind"] == "ensemble":
        return Ensemble([model_from_spec(m) for m in spec["members"]])
    model = build_model(spec["kind"], spec["elements"], spec["hyperparameters"])
    model.reference_energies = [float(v) for v in spec["reference_energies"]]
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
