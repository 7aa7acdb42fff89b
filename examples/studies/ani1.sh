#!/usr/bin/env bash
# Energy-only ANI-1 data (../shared/data): the method over 3 pipeline seeds on each file.
# ~20 min per file on 2 cores. Usage: examples/studies/ani1.sh [OUT_PREFIX]
set -euo pipefail
for name in gdb_s01 hydrocarbons_s02; do
  python -m ekd.study "examples/configs/ani1_${name}.toml" --out "${1:-runs/study_ani1}_${name}" --seeds 3
done
