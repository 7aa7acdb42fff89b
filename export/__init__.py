"""Export: checkpoints → one verified TorchScript file that LAMMPS (`pair_style ekd`) and the ASE
calculator load. The contract both sides follow is CONTRACT.md in this folder."""

from .compile import export_model, load_for_export, verify
from .metadata import FORMAT, FORMAT_VERSION, METADATA_NAME, make_metadata, parse_metadata, read_metadata
from .module import DeployedEnsemble, DeployedPotential, deploy
from .samples import SampleGraph, graph_of, sample_graphs

__all__ = ["export_model", "load_for_export", "verify", "FORMAT", "FORMAT_VERSION", "METADATA_NAME",
           "make_metadata", "parse_metadata", "read_metadata", "DeployedEnsemble", "DeployedPotential", "deploy",
           "SampleGraph", "graph_of", "sample_graphs"]
