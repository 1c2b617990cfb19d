#!/usr/bin/env bash
# On a CUDA GPU: the statistics pass against plain HF generate, GPT-2 medium shape (355M, seeded
# random weights), bf16 and fp32, at 64 prompts and at the paper's 1,199 (gpu_bench.py); then the
# whole claim suite (gpu_suite.py): the organism in own and shared positions, the 355M pair, and
# device maps. Figures as JSON in $1 (default benchmarks/gpu-results.json) and beside it,
# *-suite.json. Measured on an H200: benchmarks/README.md, benchmarks/results/.
#
#   bash benchmarks/gpu.sh                      # from the repository root, in its environment
#   bash benchmarks/gpu.sh results/gpu.json
#
# Environment:
#   PYTHON (python)                     MECHCLAIMS_GPU_DEVICE (cuda)
#   MECHCLAIMS_GPU_ROUNDS (5)           MECHCLAIMS_GPU_PROMPTS (64)    MECHCLAIMS_GPU_BATCH (32)
#   MECHCLAIMS_GPU_DTYPES (bfloat16,float32)
#   MECHCLAIMS_GPU_PROTOCOL (1199; 0 skips the protocol-size timing)
#   MECHCLAIMS_GPU_SUITE (organism,medium,device_map; empty skips the suite)
#   MECHCLAIMS_GPU_CPU_REF (a folder with a CPU run's own/claims.json and shared/claims.json)
#   MECHCLAIMS_GPU_SUITE_TIMEOUT (400: seconds per pytest run)
# Nothing is downloaded. On a machine without CUDA it prints a message and exits 0.
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
"$py" "$here/gpu_bench.py" --out "$out" --device "$device" --shape medium --dtypes "${MECHCLAIMS_GPU_DTYPES:-bfloat16,float32}" \
    --rounds "${MECHCLAIMS_GPU_ROUNDS:-5}" --prompts "${MECHCLAIMS_GPU_PROMPTS:-64}" \
    --batch-size "${MECHCLAIMS_GPU_BATCH:-32}" --protocol-prompts "${MECHCLAIMS_GPU_PROTOCOL:-1199}"
suite="${MECHCLAIMS_GPU_SUITE-organism,medium,device_map}"
if [ -n "$suite" ]; then
    "$py" "$here/gpu_suite.py" --out "${out%.json}-suite.json" --device "$device" --parts "$suite" \
        --cpu-reference "${MECHCLAIMS_GPU_CPU_REF:-}" --timeout "${MECHCLAIMS_GPU_SUITE_TIMEOUT:-400}"
fi
