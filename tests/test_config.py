"""Run configurations: errors that name the key, and the TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from ekd.config import load_config
from ekd.errors import ConfigError


@pytest.mark.parametrize("text, message", [
    ("[data]\npath = 'embedded'\n[teachers]\ncuont = 3\n", "unknown key(s) cuont in [teachers]"),
    ("[data]\npath = 'embedded'\n[teachers.train]\nforces_weight = 1.0\n", "teachers learn from energies only"),
    ("[data]\npath = 'embedded'\n[split]\ntest_selection = 'has_forces'\ntest_fraction = 0.3\n",
     "test_fraction conflicts with test_selection"),
    ("[data]\npath = 'embedded'\n[references]\nvalues = {H = -13.6}\n", "values are given but mode = 'fit'"),
    ("[data]\npath = 'embedded'\n[teachers]\ncount = 'four'\n", "teachers.count must be int"),
    ("[data]\npath = 'embedded'\n[student]\nmodel = {n_featurez = 8}\n", "unknown hipnn hyperparameter(s) n_featurez"),
    ("[data]\npath = 'embedded'\n[student.train]\nforces_weight = 0.0\n", "would learn nothing from the teachers"),
    ("[teachers]\ncount = 2\n", "the [data] table is missing"),
    ("[data]\npath = 'embedded'\n[teachers]\ncount = 2\nmembers = [{kind = 'hipnn'}]\n",
     "members lists 1 teachers but count = 2"),
    ("[data]\npath = 'embedded'\n[teachers]\ncount = 2\nsubset = [0, 2]\n",
     "subset must list distinct teacher indices in 0..1, got [0, 2]"),
    ("[data]\npath = 'embedded'\n[teachers]\ncount = 3\nsubset = [1, 1]\n",
     "subset must list distinct teacher indices in 0..2, got [1, 1]"),
    ("[data\npath = 1", "not valid TOML"),
    ("[data]\npath = 'embedded'\n[learn]\nthreshold = 2.0\nthreshold_max = 1.0\n",
     "need 0 < threshold < threshold_max"),
    ("[data]\npath = 'embedded'\n[learn]\nmax_excess_energy = -1.0\n", "max_excess_energy must be >= 0"),
    ("[data]\npath = 'embedded'\n[learn]\nmd_starts = 0\n", "md_starts and cluster_starts are both 0"),
    ("[data]\npath = 'embedded'\n[learn]\ncluster_starts = 4\ncluster_size = 1\n", "cluster_size must be at least 2"),
    ("[data]\npath = 'embedded'\n[learn]\ntemperatures = []\n", "temperatures must be positive kelvin"),
    ("[data]\npath = 'embedded'\n[learn]\nmd_every = 5000\n", "md_every must be in 1..md_steps"),
    ("[data]\npath = 'embedded'\n[learn]\nbox_every = -4\n", "box_every must be in 0..md_steps"),
    ("[data]\npath = 'embedded'\n[learn]\nbox_relax_steps = -1\n", "box_relax_steps must be >= 0"),
    ("[data]\npath = 'embedded'\n[learn]\nbudget = 0\n", "per_trajectory, budget and jobs must be at least 1"),
    ("[data]\npath = 'embedded'\n[learn]\nbox_density = 0.0\n", "box_density must be positive"),
    ("[data]\npath = 'embedded'\n[learn]\noracle = 'dft'\n", "oracle 'dft' is not known"),
    ("[data]\npath = 'embedded'\nadditions = 'x.h5'\n", "data.additions must be list"),
    ("[data]\npath = 'embedded'\nadded_weight = 0.0\n", "[data] added_weight must be a number in (0, 1000]"),
    ("[data]\npath = 'embedded'\n[learn]\nmd_test_fraction = 0.9\n", "[learn] md_test_fraction must be in [0, 0.5]"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    from ekd.config import config_to_toml

    config = load_config(None)
    path = tmp_path / "again.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config


def test_embedded_data_names(tmp_path: Path) -> None:
    """`path = "embedded"` and `"embedded-v2"` name the package's two CCSD(T) data sets."""
    from ekd.config import EMBEDDED_DATA

    for name, file in (("embedded", "chno_ccsdt.h5"), ("embedded-v2", "chno_ccsdt_v2.h5")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f"[data]\npath = '{name}'\n")
        assert load_config(path).data.path == str(EMBEDDED_DATA.with_name(file))
