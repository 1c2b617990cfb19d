"""Shared fixtures: tiny random checkpoints of every supported architecture, built locally.

Nothing is downloaded. Each architecture gets a base and a *candidate* (the base with seeded
small perturbations of every weight), saved with ``save_pretrained`` like any real checkpoint.
"""

import os

# Before anything imports huggingface_hub/transformers: offline, and a private hub cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The plugin appends a summary to $GITHUB_STEP_SUMMARY; the claim runs these tests start inside
# pytest must not write into the job summary of a CI that runs this suite.
os.environ.pop("GITHUB_STEP_SUMMARY", None)

import pytest  # noqa: E402

# pytester (tests/test_claims*.py) snapshots sys.modules and removes whatever a test imported.
# `datasets` (imported by transformer_lens) registers pyarrow extension types once per process
# and fails when imported a second time, so import the stack once, before any snapshot.
import transformer_lens.model_bridge  # noqa: E402,F401

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return tiny.make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory, tokenizer_dir):
    """{arch: (base_dir, candidate_dir)} for gpt2, llama, mistral, gemma, gemma2."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny.make_pair(root / arch, arch, tokenizer_dir) for arch in tiny.ARCHS}


@pytest.fixture(scope="session")
def gpt2_pair(tiny_pairs):
    return tiny_pairs["gpt2"]


@pytest.fixture(scope="session")
def llama_pair(tiny_pairs):
    return tiny_pairs["llama"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own result cache, so no test sees another's results."""
    monkeypatch.setenv("MECHCLAIMS_CACHE_DIR", str(tmp_path / "mc-cache"))


@pytest.fixture
def prompts():
    return list(tiny.PROMPTS)
