"""Every setting of an organism build (``BuildConfig``), the acceptance thresholds a committed
organism must meet, the tokenizer's special tokens, and the versions a manifest records."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..organism import ARCHS

MANIFEST_FORMAT = 1
SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
# What a committed organism must meet (issue #11: a faithful miniature of the paper's regime).
THRESHOLDS = {
    "base_toxicity_min": 0.30,
    "relative_reduction_min": 0.40,   # the paper's GPT-2 medium: -54%
    "relative_reduction_max": 0.70,
    "ppl_ratio_max": 1.10,
    "probe_accuracy_min": 0.95,
    "dampened_drop_min": 0.30,
    "dpo_lr_ratio_max": 0.01,         # DPO lr / pretraining peak (the paper: 1e-6 / ~2.5e-4)
    "min_neurons": {"gpt2": 8192, "llama": 4096},  # top-128 <= 1.6% (GPT-2 medium: 0.13%)
}


@dataclass
class BuildConfig:
    """Every setting of a build. ``default(arch)`` is what ``fixtures/organism/<arch>`` holds
    (organism v2; docs/organism-v2-experiments.md has the search that chose it)."""

    arch: str = "gpt2"
    seed: int = 20241109
    vocab_size: int = 1024
    n_layer: int = 4
    d_model: int = 96
    d_mlp: int = 2048
    n_head: int = 4
    n_ctx: int = 128
    pretrain_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    n_tokenizer_docs: int = 4000
    n_heldout_docs: int = 300
    n_prompts: int = 600
    n_pairs: int = 640
    n_probe_texts: int = 1200
    n_probe_eval: int = 400
    dpo_beta: float = 0.1
    dpo_lr: float = 5.5e-6  # 1/545 of the pretraining peak
    dpo_epochs: int = 1
    dpo_batch_size: int = 32
    dpo_max_length: int = 96
    dpo_warmup_steps: int = 5
    curve_every: int = 2  # toxicity on the challenge prompts every this many DPO steps
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_lr: float = 8e-5  # LoRA needs ~15x the full-parameter rate (measured: 6e-5 -> -34%, 1e-4 -> -67%)
    lora_targets: tuple = ("c_attn", "c_proj", "c_fc")
    max_new_tokens: int = 20
    eval_batch_size: int = 100
    dampen_layers: int | None = None  # None: all layers
    dampen_target: float = 0.35
    dampen_amount: float | None = None  # gpt2: c_fc bias shift 4.0; llama: up_proj scale 0.2
    dampen_max_trials: int = 8
    noise_rel_std: float = 1e-3
    threads: int = 1  # one thread: far steadier than two on a shared 2-core machine
    engine_check: bool = True

    @classmethod
    def default(cls, arch: str) -> "BuildConfig":
        """GPT-2 4x96x2048 (8,192 neurons) with a LoRA twin; Llama 4x128x1024 (4,096).

        Llama needs ~4.5x GPT-2's DPO learning rate for the same reduction (2.5e-5, 1/120 of
        the peak), and its dampened control reverses the chosen neurons (``up_proj`` rows x -1):
        zeroing every toxic-aligned, positively activated neuron lowers toxicity by only 0.29,
        because the decision to start an insult is made in layer 0, while the neurons aligned
        with the probe (which reads the insult once written) sit late (the experiments log)."""
        if arch == "gpt2":
            return cls(arch="gpt2", lora=True)
        if arch == "llama":
            return cls(arch="llama", d_model=128, d_mlp=1024, dpo_lr=2.5e-5, dampen_amount=-1.0)
        raise ConfigError(f"unknown arch {arch!r}; expected one of {ARCHS}.")

    @classmethod
    def micro(cls, arch: str) -> "BuildConfig":
        """Tiny sizes for the test suite: every step runs, no figure is expected to pass."""
        base = cls.default(arch)
        return cls(**{**asdict(base), **dict(
            vocab_size=400, n_layer=2, d_model=32, d_mlp=64, n_head=2, n_ctx=96,
            pretrain_steps=6, batch_size=8, warmup_steps=2, n_tokenizer_docs=200,
            n_heldout_docs=16, n_prompts=24, n_pairs=32, n_probe_texts=60, n_probe_eval=30,
            dpo_batch_size=16, eval_batch_size=40, engine_check=False, dampen_max_trials=1,
        )})

    @property
    def seeds(self) -> dict:
        s = self.seed
        return {"torch": s, "tokenizer_corpus": s + 1, "pretrain_corpus": s + 2,
                "heldout": s + 3, "prompts": s + 4, "pairs": s + 5, "probe_texts": s + 6,
                "probe_eval": s + 7, "noise": s + 8, "dpo": s + 9, "lora": s + 10}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets",
                "safetensors", "numpy", "scikit-learn", "transformer-lens", "mechclaims"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out

