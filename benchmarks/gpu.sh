#!/usr/bin/env bash
# The statistics pass against plain HF generate on a CUDA GPU, GPT-2 medium shape (355M,
# seeded random weights), bf16 and fp32; figures as JSON in $1 (default benchmarks/gpu-results.json).
#
#   bash benchmarks/gpu.sh                      # from the repository root, in its environment
#   bash benchmarks/gpu.sh results/gpu.json
#
# Environment: PYTHON (default python), MECHCLAIMS_GPU_ROUNDS (5), MECHCLAIMS_GPU_PROMPTS (64),
# MECHCLAIMS_GPU_BATCH (32), MECHCLAIMS_GPU_DEVICE (cuda). Nothing is downloaded.
# On a machine without CUDA it prints a message and exits 0.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/benchmarks/gpu-results.json}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
py="${PYTHON:-python}"
device="${MECHCLAIMS_GPU_DEVICE:-cuda}"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MECHCLAIMS_BENCH_SHAPES=medium

rc=0
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' || rc=$?
if [ "$rc" -eq 3 ]; then
    echo "benchmarks/gpu.sh: no CUDA device visible to $py (torch.cuda.is_available() is False); nothing measured."
    exit 0
elif [ "$rc" -ne 0 ]; then
    echo "benchmarks/gpu.sh: $py cannot import torch; activate the project's environment (pip install -e '.[dev]')." >&2
    exit "$rc"
fi

cd "$root"
"$py" -c 'import torch; print("benchmarks/gpu.sh:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
exec "$py" "$here/gpu_bench.py" --out "$out" --device "$device" --shape medium --dtypes bfloat16,float32 \
    --rounds "${MECHCLAIMS_GPU_ROUNDS:-5}" --prompts "${MECHCLAIMS_GPU_PROMPTS:-64}" \
    --batch-size "${MECHCLAIMS_GPU_BATCH:-32}"
