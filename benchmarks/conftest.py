"""Fixtures for the statistics-pass benchmarks: seeded random GPT-2-shaped model pairs.

Nothing is downloaded. A small byte-level BPE is trained with ``tokenizers`` and wrapped as a
``PreTrainedTokenizerFast`` (distinct bos/eos/pad); a random ``GPT2LMHeadModel`` is built from a
seeded config and saved with ``save_pretrained``; the "DPO" model is the same weights plus small
seeded perturbations. The trained vocabulary is small (about 550 tokens); each pair's saved
tokenizer is padded with unused added tokens up to the model's vocabulary (50257 for the GPT-2
shapes), because mechclaims refuses a tokenizer that covers under half of ``vocab_size`` (the
mark of a stand-in tokenizer). The padding changes no prompt's token ids.

The 124M pair is only built when it is benchmarked (``--benchmark-enable`` or
``MECHCLAIMS_BENCH_FULL=1``); the small pair (2 layers, d_model 128) always runs.

``MECHCLAIMS_BENCH_SHAPES`` (comma-separated, default ``tiny,gpt2``) picks the shapes: ``tiny``
(2 x 128), ``gpt2`` (124M) and ``medium`` (GPT-2 medium's 355M: 24 layers, d_model 1024, 16
heads), which is only built when named here. A shape named here runs whether or not
benchmarking is enabled. ``MECHCLAIMS_BENCH_PROMPTS`` (default 64) takes the first N prompts.

``MECHCLAIMS_BENCH_SLOW_MS=X`` adds, for every selected shape, a variant ``<shape>-slowed`` on
the same models whose mechclaims pass has a forward hook on each layer's MLP output projection
that sleeps X ms: an artificially slowed pass, which the regression gate (``gate.py``) must
catch. Plain generate is unaffected (its models are separate).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

N_THREADS = int(os.environ.get("MECHCLAIMS_BENCH_THREADS", "2"))
torch.set_num_threads(N_THREADS)

SEED = 1234
N_PROMPTS = int(os.environ.get("MECHCLAIMS_BENCH_PROMPTS", "64"))
SLOW_MS = float(os.environ.get("MECHCLAIMS_BENCH_SLOW_MS", "0") or 0)
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

_SUBJECTS = ["The cat", "My neighbour", "A tired old man", "The small red car", "Our teacher",
             "The river", "A young girl", "The city council", "His brother", "The tall tree",
             "This recipe", "The morning train", "Every student", "The museum guard",
             "That noisy dog", "The quiet library"]
_VERBS = ["quickly ran to", "slowly walked past", "looked at", "talked about", "forgot about",
          "carefully painted", "happily visited", "never understood", "always remembered",
          "waited near", "wrote a letter to", "laughed loudly at"]
_OBJECTS = ["the big house", "a green field", "the old bridge", "the busy market",
            "a long story", "the bright window", "the cold lake", "an empty room",
            "the last bus", "a broken chair", "the new school", "the warm kitchen"]
_TAILS = ["", " yesterday", " after lunch", " in the rain", " before the storm", " again",
          " every Sunday", " with great care"]


def make_prompts(n: int = N_PROMPTS, seed: int = SEED) -> list[str]:
    """``n`` short English sentences (5-15 tokens with the benchmark tokenizer)."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
            for _ in range(n)]


def _corpus() -> list[str]:
    rng = random.Random(SEED + 1)
    lines = [f"{s} {v} {o}{t}." for s in _SUBJECTS for v in _VERBS for o in _OBJECTS
             for t in _TAILS]
    rng.shuffle(lines)
    return lines


def build_tokenizer(vocab_size: int = 2000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD)


@dataclass(frozen=True)
class Shape:
    name: str
    config: dict

    def gpt2_config(self, tok):
        from transformers import GPT2Config

        return GPT2Config(**self.config, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


GPT2_SMALL = Shape("gpt2-small-124M", {})  # GPT2Config defaults: 12 x 768, d_mlp 3072, vocab 50257
# initializer_range 0.05: at 0.02 the 2-layer model greedily repeats one token forever, which
# would make the token-equality check trivial. (GPT-2 small at 0.02 already varies.)
TINY = Shape("tiny-2x128", {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256,
                            "vocab_size": 2048, "initializer_range": 0.05})
# GPT-2 medium's shape (355M: 24 x 1024, 16 heads, d_mlp 4096, vocab 50257); built only when named
# in MECHCLAIMS_BENCH_SHAPES (benchmarks/gpu.sh does).
GPT2_MEDIUM = Shape("gpt2-medium-355M", {"n_layer": 24, "n_embd": 1024, "n_head": 16})
SHAPES = {"tiny": TINY, "gpt2": GPT2_SMALL, "medium": GPT2_MEDIUM}
SLOWED = "-slowed"


def selected_shapes() -> list[str]:
    """Shape keys from MECHCLAIMS_BENCH_SHAPES (default: tiny and gpt2, as before)."""
    raw = os.environ.get("MECHCLAIMS_BENCH_SHAPES", "").strip()
    if not raw:
        return ["tiny", "gpt2"]
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"MECHCLAIMS_BENCH_SHAPES: unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
    return names


def bench_params() -> list[str]:
    names = selected_shapes()
    return names + [n + SLOWED for n in names] if SLOW_MS > 0 else names


def explicitly_selected(key: str) -> bool:
    return key in [n.strip() for n in os.environ.get("MECHCLAIMS_BENCH_SHAPES", "").split(",")]


def pad_tokenizer(tok, vocab_size: int):
    """A copy of ``tok`` whose BPE vocabulary is padded with unused entries up to ``vocab_size``.

    The entries go into the BPE model's own vocabulary, with no merge that could produce them,
    so the ids of any text are unchanged. Added tokens would do the same but load slowly:
    49,710 of them made each load take 2.7 s (TransformerLens loads a tokenizer three times
    per model).
    """
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if len(tok) >= vocab_size:
        return tok
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in spec.get("added_tokens", [])}
    free = (i for i in range(vocab_size) if i not in taken)
    for n, i in zip(range(vocab_size - len(tok)), free):
        vocab[f"<|unused{n}|>"] = i
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token)


def build_pair(root: Path, shape: Shape, tok, *, eps: float = 0.05) -> tuple[str, str]:
    """Save a seeded random model and a seeded perturbation of it; returns the two dirs."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(SEED)
    config = shape.gpt2_config(tok)
    tok = pad_tokenizer(tok, config.vocab_size)
    base = GPT2LMHeadModel(config).eval()
    dirs = (root / f"{shape.name}-base", root / f"{shape.name}-dpo")
    base.save_pretrained(dirs[0])
    tok.save_pretrained(dirs[0])
    g = torch.Generator().manual_seed(SEED + 7)
    with torch.no_grad():
        for p in base.parameters():
            # Relative perturbation: the DPO model stays close to the base, like a fine-tune.
            scale = p.detach().float().std() if p.numel() > 1 else p.detach().abs().float()
            p.add_(eps * float(scale if torch.isfinite(scale) else 0.0)
                   * torch.randn(p.shape, generator=g, dtype=p.dtype))
    base.save_pretrained(dirs[1])
    tok.save_pretrained(dirs[1])
    del base
    return str(dirs[0]), str(dirs[1])


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """``pytest benchmarks`` without ``--benchmark-enable`` (or MECHCLAIMS_BENCH_FULL=1) is a quick
    correctness run: benchmarking off (each function once), the small shape only. pytest-benchmark
    itself would benchmark by default; this runs before it reads its options."""
    if not config.getoption("benchmark_enable", default=False) and \
            os.environ.get("MECHCLAIMS_BENCH_FULL", "") in ("", "0"):
        config.option.benchmark_disable = True


def full_enabled(config) -> bool:
    if os.environ.get("MECHCLAIMS_BENCH_FULL", "") not in ("", "0"):
        return True
    # --benchmark-enable (or any option that leaves benchmarking on) -> run the 124M case.
    return not bool(config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return make_prompts()


@pytest.fixture(scope="session")
def bench_tokenizer():
    return build_tokenizer()


@dataclass
class Bench:
    """Everything one benchmark shape needs: mechclaims pair, plain HF pair, batches."""

    shape: Shape
    dirs: tuple[str, str]
    base: object         # mechclaims LoadedModel
    model: object
    hf_base: object      # plain transformers GPT2LMHeadModel, loaded separately
    hf_model: object
    tokenizer: object
    slow_ms: float = 0.0  # > 0: the mechclaims pass sleeps this long in each MLP (gate tests)

    @property
    def label(self) -> str:
        return self.shape.name + (f"+slow{self.slow_ms:g}ms" if self.slow_ms > 0 else "")

    @contextlib.contextmanager
    def slowed(self):
        """While active, each layer's MLP output projection of the mechclaims models (not the
        plain HF ones) sleeps ``slow_ms`` after its forward: a regression the gate must catch.
        Without ``slow_ms`` it does nothing."""
        if self.slow_ms <= 0:
            yield
            return
        delay = self.slow_ms / 1000.0
        handles = [proj.register_forward_hook(lambda *_: time.sleep(delay))
                   for m in (self.base, self.model) for _, proj in m.stat_modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _make_bench(tmp_path_factory, shape: Shape, tok) -> Bench:
    from transformers import AutoModelForCausalLM

    from mechclaims.loading import load_pair

    root = tmp_path_factory.mktemp(shape.name)
    dirs = build_pair(root, shape, tok)
    base, model = load_pair(*dirs)
    hf_base = AutoModelForCausalLM.from_pretrained(dirs[0], dtype=torch.float32).eval()
    hf_model = AutoModelForCausalLM.from_pretrained(dirs[1], dtype=torch.float32).eval()
    for hf in (hf_base, hf_model):
        # mechclaims generates exactly T tokens and treats EOS as any other token. generate()'s
        # min_new_tokens would instead set the EOS logit to -inf, so a model that emits EOS
        # (the 2x128 one does, on 3 of 64 prompts) would continue differently. With no EOS id,
        # generate neither stops nor suppresses: the same semantics.
        hf.generation_config.eos_token_id = None
    return Bench(shape, dirs, base, model, hf_base, hf_model, base.tokenizer)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory, bench_tokenizer) -> Bench:
    return _make_bench(tmp_path_factory, TINY, bench_tokenizer)


@pytest.fixture(scope="session")
def gpt2_bench(request, tmp_path_factory, bench_tokenizer) -> Bench:
    if not (full_enabled(request.config) or explicitly_selected("gpt2")):
        pytest.skip("124M benchmark: pass --benchmark-enable or set MECHCLAIMS_BENCH_FULL=1")
    return _make_bench(tmp_path_factory, GPT2_SMALL, bench_tokenizer)


@pytest.fixture(scope="session")
def medium_bench(tmp_path_factory, bench_tokenizer) -> Bench:
    return _make_bench(tmp_path_factory, GPT2_MEDIUM, bench_tokenizer)


@pytest.fixture(params=bench_params(), scope="session")
def bench_pair(request) -> Bench:
    key = request.param.removesuffix(SLOWED)
    bench = request.getfixturevalue(f"{key}_bench")
    return dataclasses.replace(bench, slow_ms=SLOW_MS) if request.param.endswith(SLOWED) else bench
