#!/usr/bin/env bash
# MD stability of every seed's student and energy-only baseline of a study, and of every
# variant's student, side by side
# (same molecules, same starting velocities and thermostat noise for every model).
# Usage: examples/studies/stability.sh STUDY_DIR MOLECULES_FILE [ekd.stability options...]
# e.g.   examples/studies/stability.sh runs/study_embedded python/ekd/embedded/chno_ccsdt.h5 \
#            --energy-key "ccsd(t)_dz.energy" --steps 2000 --seeds 2
set -euo pipefail
study="$1"; molecules="$2"; shift 2
models=()
mkdir -p "$study/stability/models"
for run in "$study"/seed_*; do
  name="${run##*/seed_}"                           # "S" or, for a variant, "S-VARIANT"
  seed="${name%%-*}"
  if [ "$name" = "$seed" ]; then wanted=(student baseline); tag=""
  else wanted=(student); variant="${name#*-}"; tag="_${variant// /_}"; fi
  for model in "${wanted[@]}"; do
    file="$study/stability/models/${model}${tag}_seed${seed}.pt"
    [ -f "$file" ] || python -m ekd.export "$run" --model "$model" -o "$file"
    models+=("$file")
  done
done
python -m ekd.stability "${models[@]}" --molecules "$molecules" --out "$study/stability" "$@"
