"""Models: HIP-NN, the e3nn equivariant model and ensembles, behind one interface (`Potential`)."""

from .ensemble import Ensemble
from .hipnn import HIPNN, HIPNNConfig
from .potential import Potential, Prediction, edge_vectors, predict
from .io import load_model, model_from_checkpoint, read_checkpoint
from .registry import build_model, config_class, count_parameters, model_from_spec, model_spec

__all__ = [
    "Ensemble", "HIPNN", "HIPNNConfig", "Potential", "Prediction", "edge_vectors", "predict",
    "load_model", "model_from_checkpoint", "read_checkpoint", "build_model", "config_class", "count_parameters", "model_from_spec", "model_spec",
]
