#!/usr/bin/env bash
# Labels beyond the data (docs/results.md, "Teacher-labelled conformations beyond the data"): the
# demo's method over 3 seeds, and per seed a student trained on the data plus ~2,300 frames of
# MD driven by the teachers' ensemble at 300, 500 and 800 K (100 trajectories each, 200 fs,
# a frame every 20 fs, dropped where an atom's force spread passes 1.5 eV/Å).
# ~50 min on 2 cores. Then the stability of every seed's models, side by side:
#   examples/studies/stability.sh OUT_DIR python/ekd/embedded/chno_ccsdt.h5 \
#       --energy-key "ccsd(t)_dz.energy" --steps 4000 --seeds 6
# Usage: examples/studies/augment.sh [OUT_DIR]
set -euo pipefail
python -m ekd.study --out "${1:-runs/study_augment}" --seeds 3 \
  --variant "md:augment.md_starts=100;augment.md_temperatures=[300.0, 500.0, 800.0];augment.md_steps=400;augment.md_every=40;augment.max_spread=1.5;baseline.enabled=false"
