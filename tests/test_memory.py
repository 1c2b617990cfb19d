"""Peak memory of the statistics pass does not grow with the number of prompts: the sums are
kept per chunk (at most 32), never per prompt. Measured as the peak RSS of a subprocess."""

import json
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, resource, sys
from mechclaims.loading import load_model
from mechclaims.probe import Probe
from mechclaims.stats import StatsSettings, collect_pair
import torch

base, cand, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
b, m = load_model(base, memo=False), load_model(cand, memo=False)
probe = Probe(torch.ones(b.d_model, dtype=torch.float64))
words = ["you", "are", "a", "kind", "person", "shut", "up", "the", "cat", "sat"]
prompts = [" ".join(words[(i + j) % len(words)] for j in range(3 + i % 5)) for i in range(n)]
# warm up once, so allocator and library caches are the same in both runs
collect_pair(b, m, prompts[:8], probe, StatsSettings(max_new_tokens=4))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
collect_pair(b, m, prompts, probe, StatsSettings(max_new_tokens=4, batch_size=32))
print(json.dumps({"before_kb": before, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def _peak(base, cand, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(base), str(cand), str(n)], capture_output=True,
                         text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                      "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_prompts(gpt2_pair):
    small = _peak(*gpt2_pair, 64)
    large = _peak(*gpt2_pair, 1024)
    growth = (large["peak_kb"] - small["peak_kb"]) / small["peak_kb"]
    assert growth < 0.10, (small, large)
