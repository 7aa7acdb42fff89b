#!/usr/bin/env bash
# Ensemble size and composition (docs/results.md, "How many teachers, of which kind"): per seed
# one pool of 16 teachers (8 HIP-NN and 8 equivariant, the demo's sizes) is trained once; the
# main run's student learns from all 16, and each variant's student from a subset of them
# (`[teachers] subset`), labelled again by that subset. Every variant is compared with its seed's
# baseline (same architecture and data, energies only). ~100 min on 2 cores.
# Usage: examples/studies/ensembles.sh [OUT_DIR] [more ekd.study options]
set -euo pipefail
out="${1:-runs/study_ensembles}"
shift || true
hip='{}'
eq='{kind = "equivariant"}'
members="[$hip, $hip, $hip, $hip, $hip, $hip, $hip, $hip, $eq, $eq, $eq, $eq, $eq, $eq, $eq, $eq]"
python -m ekd.study --out "$out" --seeds 3 --set "teachers.count=16" --set "teachers.members=$members" \
  --variant "hipnn 4:teachers.subset=[0, 1, 2, 3];baseline.enabled=false" \
  --variant "hipnn 8:teachers.subset=[0, 1, 2, 3, 4, 5, 6, 7];baseline.enabled=false" \
  --variant "equivariant 4:teachers.subset=[8, 9, 10, 11];baseline.enabled=false" \
  --variant "equivariant 8:teachers.subset=[8, 9, 10, 11, 12, 13, 14, 15];baseline.enabled=false" \
  --variant "mixed 4:teachers.subset=[0, 1, 8, 9];baseline.enabled=false" \
  --variant "mixed 8:teachers.subset=[0, 1, 2, 3, 8, 9, 10, 11];baseline.enabled=false" \
  "$@"
