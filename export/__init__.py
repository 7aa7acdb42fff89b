"""Export: checkpoints → one verified TorchScript file that LAMMPS (`pair_style ekd`) and the ASE
calculator load, and the one Python loader of such files. The contract both sides follow is
CONTRACT.md in this folder.

    compile.py   checkpoint(s) → verified file (`export_model`)
    metadata.py  `Metadata`: every key of ekd.json, named once
    module.py    the deployed module (the contract's call signature)
    samples.py   sample structures and the contract graph of a structure
    load.py      `load_exported`: file → module + metadata; forces and virial from edge_grad
"""

from .compile import export_model, load_for_export, verify
from .load import (SAME_POSITION, Evaluation, ExportedModel, MemberEvaluation, force_deviation, forces_from_edge_grad,
                   is_exported, load_exported, model_names, read_metadata, refuse_same_positions,
                   virial_from_edge_grad)
from .metadata import FORMAT, FORMAT_VERSION, METADATA_NAME, Metadata, make_metadata
from .module import DeployedEnsemble, DeployedPotential, deploy
from .samples import SampleGraph, graph_of, sample_graphs

__all__ = ["export_model", "load_for_export", "verify", "SAME_POSITION", "Evaluation", "ExportedModel",
           "MemberEvaluation", "force_deviation", "forces_from_edge_grad", "refuse_same_positions", "is_exported", "load_exported", "model_names", "read_metadata",
           "virial_from_edge_grad", "FORMAT", "FORMAT_VERSION", "METADATA_NAME", "Metadata", "make_metadata",
           "DeployedEnsemble", "DeployedPotential", "deploy", "SampleGraph", "graph_of", "sample_graphs"]
