"""Files from strangers: an exported file whose metadata is damaged (bytes flipped, cut short,
keys removed or of the wrong type, nested a million deep) ends, in LAMMPS, in a clean run or a
clear ERROR line, and in Python in a loaded file or a ModelFileError: never a crash, a hang or a
traceback. Seeded, so a failure can be replayed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.errors import ModelFileError
from ekd.export import METADATA_NAME, Metadata, export_model, read_metadata
from ekd.md.lammps_driver import neighbor_lines, pair_lines, system_lines, write_data
from ekd.md.lammps_driver import run_lammps as run_deck

MUTATIONS = 30
WRONG_VALUES = ["five", None, [], {}, True, 1e308, -1, [1, "H"], {"a": [1, {"b": None}]}]


def mutate(text: str, rng: np.random.Generator) -> str:
    """One damage of one of five kinds, chosen by `rng`."""
    kind = int(rng.integers(5))
    if kind == 0:  # a flipped byte
        k = int(rng.integers(len(text)))
        return text[:k] + chr(int(rng.integers(32, 127))) + text[k + 1:]
    if kind == 1:  # cut short
        return text[:int(rng.integers(len(text)))]
    meta = json.loads(text)
    key = str(rng.choice(sorted(meta)))
    if kind == 2:  # a key removed
        del meta[key]
    elif kind == 3:  # a value of the wrong type
        meta[key] = WRONG_VALUES[int(rng.integers(len(WRONG_VALUES)))]
    else:  # nesting far deeper than any reader should follow
        meta[key] = "NESTED"
        return json.dumps(meta).replace('"NESTED"', "[" * 1_000_000 + "]" * 1_000_000)
    return json.dumps(meta)


@pytest.fixture(scope="module")
def damaged(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("damaged")
    good = folder / "good.pt"
    export_model([tiny_run / "student/checkpoint.pt"], good, torch.float64)
    text, module = read_metadata(good).to_json(), torch.jit.load(str(good))
    rng = np.random.default_rng(2026)
    files = []
    for k in range(MUTATIONS):
        path = folder / f"damaged_{k}.pt"
        torch.jit.save(module, str(path), _extra_files={METADATA_NAME: mutate(text, rng)})
        files.append(path)
    return files


def test_python_reader_loads_or_names_the_problem(damaged: list[Path]) -> None:
    outcomes = {"loaded": 0, "refused": 0}
    for path in damaged:
        try:
            assert isinstance(read_metadata(path), Metadata)
            outcomes["loaded"] += 1
        except ModelFileError as err:
            assert str(path) in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= MUTATIONS // 3, outcomes  # the mutations do damage


def test_lammps_runs_or_stops_with_an_error(damaged: list[Path], box, tmp_path: Path) -> None:
    elements = ["H", "C", "N", "O"]
    write_data(tmp_path / "data.lmp", box, elements)
    refused = 0
    for k, path in enumerate(damaged):
        deck = tmp_path / f"in.{k}"
        deck.write_text("\n".join([system_lines(), pair_lines(path, elements), neighbor_lines(), "run 0", ""]))
        run = run_deck(deck, timeout=120)
        if run.ok:
            continue
        assert run.error.startswith("ERROR"), f"{path.name}: not a clean LAMMPS error: {run.error}"
        assert path.name in run.error or "ekd" in run.error, run.error
        refused += 1
    assert refused >= MUTATIONS // 3
