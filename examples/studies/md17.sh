#!/usr/bin/env bash
# MD17 ethanol trained on energies only, equivariant teachers → HIP-NN student, over 3 pipeline
# seeds (each seed draws new teachers: the config's fixed teacher seeds are cleared).
# ~45 min on 2 cores. Usage: examples/studies/md17.sh [OUT_DIR]
set -euo pipefail
python -m ekd.study examples/configs/md17_ethanol_equivariant.toml --out "${1:-runs/study_md17}" --seeds 3 \
  --set "teachers.members=[]"
