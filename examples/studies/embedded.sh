#!/usr/bin/env bash
# The demo's method over 3 independent pipeline seeds on the embedded CCSD(T) data, with the
# student variants of docs/results.md: forces + atomic energies, a small and a large student.
# ~50 min on 2 cores. Usage: examples/studies/embedded.sh [OUT_DIR]
set -euo pipefail
python -m ekd.study --out "${1:-runs/study_embedded}" --seeds 3 \
  --variant "atom energies:student.train.atom_energy_weight=0.1;baseline.enabled=false" \
  --variant "small:student.model={n_features = 16, n_sensitivities = 8, n_interactions = 1, n_atom_layers = 2, cutoff = 5.0, soft_max = 4.5}" \
  --variant "large:student.model={n_features = 64, n_sensitivities = 20, n_interactions = 2, n_atom_layers = 3, cutoff = 5.0, soft_max = 4.5}"
