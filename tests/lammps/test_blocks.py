"""pair_style ekd with graphs in blocks (CONTRACT.md §2d): one rank through forward(), several
ranks through layer_values / layer_gradients with the features exchanged in between, and the
`blocks auto|yes|no` keyword. Files exported with blocks of a few dozen edges cut the test box
into many blocks; every result must equal the whole graph's on one rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ekd.export import export_model, read_metadata
from tests.lammps.conftest import random_checkpoint
from tests.lammps.test_pair_style import REL, lammps_on, relative, report


@pytest.fixture(scope="module")
def files(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny run's 2-layer teacher and a 2-layer equivariant model, each exported as usual
    and with every graph in blocks of 40 edges."""
    folder = tmp_path_factory.mktemp("block_models")
    template = tiny_run / "teachers/teacher_0/checkpoint.pt"
    equivariant = random_checkpoint(template, folder, "equivariant",
                                    {"n_features": 8, "l_max": 1, "n_interactions": 2, "cutoff": 3.5})
    out = {}
    for name, checkpoint, dtypes in (("teacher", template, ("float64", "float32")),
                                     ("equivariant", equivariant, ("float64",))):
        for dtype in dtypes:
            out[f"{name}_{dtype}"] = folder / f"{name}_{dtype}.pt"
            export_model([checkpoint], out[f"{name}_{dtype}"], getattr(torch, dtype))
            out[f"{name}_{dtype}_blocks"] = folder / f"{name}_{dtype}_blocks.pt"
            export_model([checkpoint], out[f"{name}_{dtype}_blocks"], getattr(torch, dtype), whole_edges=0,
                         block_edges=40)
    return out


def run(folder: Path, model: str, atoms: Atoms, ranks: int = 1, processors: str = ""):
    elements = read_metadata(Path(model.split()[0])).elements
    return lammps_on(folder, model, atoms, {s: k + 1 for k, s in enumerate(elements)}, ranks=ranks,
                     processors=processors)


def assert_same(got, want, tolerance: float) -> None:
    assert np.abs(want.forces).max() > 1e-3
    assert abs(got.energy - want.energy) <= tolerance * abs(want.energy)
    assert relative(got.forces, want.forces) <= tolerance
    assert relative(got.atom_energy, want.atom_energy) <= tolerance
    assert relative(got.virial, want.virial) <= tolerance


@pytest.mark.parametrize("model, ranks, processors, option", [
    ("teacher_float64", 1, "", ""), ("teacher_float64", 2, "", ""),
    ("teacher_float64", 4, "processors 4 1 1", ""), ("teacher_float64", 2, "", "exchange no"),
    ("teacher_float32", 2, "", ""), ("equivariant_float64", 2, "", "")])
def test_blocks_equal_the_whole_graph_on_one_rank(tmp_path: Path, files: dict, box: Atoms, model: str, ranks: int,
                                                   processors: str, option: str) -> None:
    """`processors 4 1 1` with the atoms squeezed into half the box: two ranks own nothing and
    take part in the exchanges only."""
    atoms = box.copy()
    if processors:
        atoms.positions[:, 0] = atoms.positions[:, 0] * 0.45 + 0.1
    whole = run(tmp_path / "whole", str(files[model]), atoms)
    blocked = run(tmp_path / "blocks", f"{files[model + '_blocks']} {option}", atoms, ranks, processors)
    report(f"blocks of 40 edges, {ranks} rank(s) {processors} {option} vs whole graph on 1 rank, {model}",
           blocked.energy, whole.energy, [("forces", blocked.forces, whole.forces),
                                          ("virial", blocked.virial, whole.virial)])
    assert "layers run in blocks of about 40 edges" in blocked.log
    assert_same(blocked, whole, REL[model.rsplit("_", 1)[1]])


def test_blocks_keyword(tmp_path: Path, files: dict, box: Atoms) -> None:
    """`blocks yes` puts a usual file's graphs in blocks, `blocks no` runs a blocks file whole."""
    whole = run(tmp_path / "whole", str(files["teacher_float64"]), box)
    assert "graphs of more than 1048576 edges per rank run in blocks" in whole.log
    forced = run(tmp_path / "yes", f"{files['teacher_float64']} blocks yes", box, ranks=2)
    assert "layers run in blocks of about 65536 edges" in forced.log
    assert_same(forced, whole, 1e-10)
    unforced = run(tmp_path / "no", f"{files['teacher_float64_blocks']} blocks no", box, ranks=2)
    assert "layers run on the whole graph (blocks no)" in unforced.log
    assert_same(unforced, whole, 1e-10)
