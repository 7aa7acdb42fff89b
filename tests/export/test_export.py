"""Export: the saved file equals the training-time model, carries its metadata, and refuses
bad inputs with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.config import load_config
from ekd.errors import ModelFileError
from ekd.export import METADATA_NAME, Metadata, deploy, graph_of, load_exported, read_metadata, verify
from ekd.export.__main__ import main as export_main
from ekd.models import load_model
from ekd.models.operators import fused_available
from ekd.run_directory import open_run
from ekd.training import predict_all

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    files = {}
    for model in ("student", "teacher_0", "ensemble"):
        for dtype in ("float64", "float32"):
            out = folder / f"{model}_{dtype}.pt"
            assert export_main([str(tiny_run), "--model", model, "-o", str(out), "--dtype", dtype]) == 0
            files[f"{model}_{dtype}"] = out
    return files


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", ["student", "teacher_0"])
def test_exported_file_equals_training_model(tiny_run: Path, exported: dict, model: str, dtype: str) -> None:
    checkpoint = tiny_run / ("student" if model == "student" else "teachers/teacher_0") / "checkpoint.pt"
    eager = load_model(checkpoint)  # float64, as trained
    run = open_run(tiny_run, load_config(tiny_run.parent / "tiny.toml"), progress=False)
    ids = run.split["test"][:4]
    expected = predict_all(eager, run.graph(eager.cutoff), ids)
    module = torch.jit.load(str(exported[f"{model}_{dtype}"]))
    offsets = run.data.offsets
    for k, conf in enumerate(ids):
        atoms = slice(offsets[conf], offsets[conf + 1])
        g = graph_of(np.searchsorted(run.elements, run.data.species[atoms]), run.data.positions[atoms], eager.cutoff)
        energy, atom_energy, edge_grad = module(g.edge_vectors.to(getattr(torch, dtype)), g.receivers, g.senders,
                                                g.species, g.n_local)
        forces = np.zeros((g.n_local, 3))
        np.add.at(forces, g.receivers.numpy(), edge_grad.double().numpy())
        np.add.at(forces, g.senders.numpy(), -edge_grad.double().numpy())
        tol = TOLERANCE[dtype]
        assert energy.dtype == torch.float64 and atom_energy.dtype == torch.float64
        assert abs(float(energy) - expected.energy[k]) < tol * abs(expected.energy[k])
        start = int(sum(run.data.n_atoms[ids[:k]]))
        reference = expected.forces[start:start + g.n_local]
        assert np.abs(forces - reference).max() <= tol * max(1.0, np.abs(reference).max()) * 10
        assert np.allclose(atom_energy.numpy(), expected.atom_energy[start:start + g.n_local],
                           rtol=tol, atol=0)


def test_metadata(tiny_run: Path, exported: dict) -> None:
    meta = read_metadata(exported["teacher_0_float32"])
    # the oldest version whose readers run it: 3 for a HIP-NN calling ekd's operators (§2e)
    assert meta.format == "ekd-potential" and meta.format_version == (3 if fused_available() else 1)
    assert meta.elements == list(json.loads((tiny_run / "references.json").read_text()))
    assert meta.dtype == "float32" and meta.num_interactions == 2
    assert meta.receptive_field == pytest.approx(2 * meta.cutoff)
    assert meta.energy_unit == "eV" and meta.length_unit == "Angstrom"
    assert meta.min_distance > 0.5
    assert len(meta.provenance["checkpoint_sha256"][0]) == 64
    ensemble = read_metadata(exported["ensemble_float64"])
    assert ensemble.model_kind == "ensemble" and ensemble.members == 2


def test_ensemble_members_average_to_the_mean(exported: dict) -> None:
    module = torch.jit.load(str(exported["ensemble_float64"]))
    rng = np.random.default_rng(0)
    g = graph_of(np.array([1, 0, 0, 2, 0, 2]), rng.uniform(0, 3, size=(6, 3)), 4.5)
    energy, _, edge_grad = module(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)
    energies, grads = module.members(g.edge_vectors, g.receivers, g.senders, g.species, g.n_local)
    assert energies.shape == (2,) and grads.shape == (2, len(g.receivers), 3)
    assert torch.allclose(energies.mean(), energy, rtol=1e-12)
    assert torch.allclose(grads.mean(0), edge_grad, rtol=1e-10, atol=1e-14)


def test_verify_refuses_a_file_that_differs(tiny_run: Path) -> None:
    student = load_model(tiny_run / "student/checkpoint.pt")
    other = load_model(tiny_run / "baseline/checkpoint.pt")
    with pytest.raises(ModelFileError, match="export check failed on sample structure 0: energy"):
        verify(deploy(student), torch.jit.script(deploy(other)), student, torch.float64)


def test_verify_refuses_layers_that_differ_from_forward(tiny_run: Path) -> None:
    """A file whose layer() chain misses the reference energies, while forward() is right."""
    from typing import Tuple

    from ekd.export.module import DeployedLayers

    class LayersWithoutReference(DeployedLayers):
        @torch.jit.export
        def layer(self, t: int, z: torch.Tensor, edge_features: torch.Tensor, receivers: torch.Tensor,
                  senders: torch.Tensor, species: torch.Tensor, n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
            z_next, energy = self.model.layer(t, z, edge_features, receivers, senders, species, n_local)
            return z_next, energy.to(torch.float64)

    student = load_model(tiny_run / "student/checkpoint.pt")
    broken = torch.jit.script(LayersWithoutReference(student))
    with pytest.raises(ModelFileError, match="sample structure 0: layer-by-layer atom_energy differs from forward"):
        verify(deploy(student), broken, student, torch.float64)


def test_export_cli_errors(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_main([str(tiny_run), "--model", "teacher_9", "-o", str(tmp_path / "x.pt")]) == 2
    assert "no checkpoint for model 'teacher_9'" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert export_main([str(junk), "-o", str(tmp_path / "x.pt")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_read_metadata_errors(tmp_path: Path, exported: dict) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        read_metadata(tmp_path / "absent.pt")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a TorchScript file"):
        read_metadata(text)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ModelFileError, match="a TorchScript file but not an ekd model"):
        read_metadata(plain)
    newer = tmp_path / "newer.pt"
    meta = read_metadata(exported["student_float64"])
    torch.jit.save(torch.jit.load(str(exported["student_float64"])), str(newer),
                   _extra_files={METADATA_NAME: json.dumps({**json.loads(meta.to_json()), "format_version": 99})})
    with pytest.raises(ModelFileError, match="format version 99 is newer"):
        read_metadata(newer)


def _with_metadata(tmp_path: Path, source: Path, name: str, text: str) -> Path:
    """A copy of an exported file whose ekd.json is `text`."""
    path = tmp_path / name
    torch.jit.save(torch.jit.load(str(source)), str(path), _extra_files={METADATA_NAME: text})
    return path


def test_metadata_errors_name_the_key(tmp_path: Path, exported: dict) -> None:
    source = exported["student_float64"]
    good = json.loads(read_metadata(source).to_json())
    missing = {k: v for k, v in good.items() if k != "cutoff"}
    with pytest.raises(ModelFileError, match="lacks the key.* cutoff"):
        read_metadata(_with_metadata(tmp_path, source, "missing.pt", json.dumps(missing)))
    with pytest.raises(ModelFileError, match="key cutoff must be a number, got 'five'"):
        read_metadata(_with_metadata(tmp_path, source, "str.pt", json.dumps({**good, "cutoff": "five"})))
    with pytest.raises(ModelFileError, match="key dtype must be float32 or float64"):
        read_metadata(_with_metadata(tmp_path, source, "dtype.pt", json.dumps({**good, "dtype": "int8"})))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_metadata(_with_metadata(tmp_path, source, "json.pt", json.dumps(good)[:-3]))


def test_older_metadata_still_loads(tmp_path: Path, exported: dict) -> None:
    """Files written before min_distance and exchange_features existed load with their defaults,
    and keys a newer writer may add are ignored."""
    source = exported["student_float64"]
    good = json.loads(read_metadata(source).to_json())
    old = {k: v for k, v in good.items() if k not in ("min_distance", "exchange_features")}
    meta = read_metadata(_with_metadata(tmp_path, source, "old.pt", json.dumps({**old, "future_key": 1})))
    assert meta.min_distance == 0.0 and meta.exchange_features == [] and meta.cutoff == good["cutoff"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_student_uncertainty_in_the_file_equals_eager(tiny_run: Path, exported: dict, dtype: str) -> None:
    """A student with an uncertainty head exports as format version 2 (3 with ekd's operators) with
    `forward_with_uncertainty` (CONTRACT.md §2c): the training model's uncertainty (float64) per
    atom, on the whole-graph path and from the last layer's features on the layer path."""
    from ekd.export.module import chain_layers
    from ekd.export.samples import sample_graphs

    meta = read_metadata(exported[f"student_{dtype}"])
    assert meta.format_version == (3 if fused_available() else 2) and meta.atom_uncertainty
    assert meta.uncertainty_scale == 1.0
    assert read_metadata(exported[f"teacher_0_{dtype}"]).format_version == (3 if fused_available() else 1)
    eager = load_model(tiny_run / "student/checkpoint.pt")
    module = torch.jit.load(str(exported[f"student_{dtype}"]))
    tolerance = TOLERANCE[dtype]
    for g in sample_graphs(eager.n_species, eager.cutoff):
        _, expected = eager.forward_with_uncertainty(g.edge_vectors, g.receivers, g.senders, g.species)
        vectors = g.edge_vectors.to(getattr(torch, dtype))
        got = module.forward_with_uncertainty(vectors, g.receivers, g.senders, g.species, g.n_local)[3]
        assert got.dtype == torch.float64 and got.shape == (g.n_local,)
        assert torch.allclose(got, expected.detach(), rtol=tolerance, atol=0)
        layered = chain_layers(module, eager.num_interactions, vectors, g.receivers, g.senders, g.species)[2]
        assert torch.allclose(layered, got, rtol=tolerance, atol=0)


def test_every_key_of_the_wrong_type_is_refused_or_harmless(exported: dict) -> None:
    """Each metadata key set to each kind of wrong value: the reader loads the file or raises a
    ModelFileError naming it, never another exception."""
    good = json.loads(read_metadata(exported["student_float64"]).to_json())
    for key in good:
        for value in ["five", None, [], {}, True, 1e308, -1, [1, "H"], {"a": [1, {"b": None}]}]:
            text = json.dumps({**good, key: value})
            try:
                Metadata.from_json(text, Path("x.pt"))
            except ModelFileError as err:
                assert str(err).startswith("x.pt: "), err


@pytest.mark.skipif(not fused_available(), reason="ekd's operators are not built")
def test_file_calling_ekd_operators_without_them_names_the_library(exported: dict) -> None:
    """A reader without ekd's operators (here: EKD_FUSED=0) refuses a file that calls them
    (format version 3, CONTRACT.md §2e) with a message naming the library and how to build it."""
    import os
    import subprocess
    import sys

    path = exported["teacher_0_float32"]
    code = ("from ekd.export import load_exported\n"
            "from ekd.errors import ModelFileError\n"
            f"try:\n    load_exported({str(path)!r})\nexcept ModelFileError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "EKD_FUSED": "0"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(path) in done.stdout and "libekdops.so" in done.stdout and "python -m ekd.plugin build" in done.stdout


def with_renamed_operator(source: Path, path: Path, old: str, new: str) -> Path:
    """A copy of an exported file whose TorchScript code calls torch.ops.ekd.`new` where it
    called `old`: a file as a newer ekd with an operator `new` would write it."""
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w") as copy:
        renamed = 0
        for item in archive.infolist():
            data = archive.read(item)
            if item.filename.endswith(".py") and f"ops.ekd.{old}".encode() in data:
                data, renamed = data.replace(f"ops.ekd.{old}".encode(), f"ops.ekd.{new}".encode()), renamed + 1
            copy.writestr(item, data)
    assert renamed > 0, f"{source} does not call ekd::{old}"
    return path


@pytest.mark.skipif(not fused_available(), reason="ekd's operators are not built")
def test_file_calling_an_operator_the_library_lacks_says_rebuild(exported: dict, tmp_path: Path) -> None:
    """A file exported by a newer ekd may call an operator an older libekdops.so lacks (as
    ekd::edge_lengths, 2026-12-02): loading it names the operator and says to rebuild."""
    path = with_renamed_operator(exported["teacher_0_float32"], tmp_path / "newer.pt", "edge_lengths", "edge_lengthz")
    with pytest.raises(ModelFileError, match="calls ekd::edge_lengthz, which the loaded libekdops.so .* lacks: "
                                             "rebuild it with python -m ekd.plugin build"):
        load_exported(path)
