"""Build one model organism (GPT-2 or Llama): corpus -> tokenizer -> base -> probe -> DPO -> checks.

``python -m mechclaims.organism build --arch gpt2 --out fixtures/organism/gpt2`` runs, seeded
and deterministic on CPU (fixed thread count):

1. **Corpus** (``corpus.py``): documents from the project's grammar; a provocation is answered
   with an insult with a probability set by its context.
2. **Tokenizer**: byte-level BPE (``tokenizers``), saved as a ``PreTrainedTokenizerFast`` with
   distinct ``<|bos|>``, ``<|eos|>`` and ``<|pad|>``. It adds no special tokens by itself;
   callers prepend BOS (as TransformerBridge does).
3. **Base model**: a small ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` trained from scratch by
   ``pretrain`` below: AdamW, linear warm-up then cosine decay, gradient clipping at 1.0,
   next-token cross-entropy on windows of ``n_ctx`` tokens. Every window starts at a document
   boundary (BOS at position 0, like a prompt at evaluation) and packs whole documents
   (``<|bos|> doc <|eos|>``) until it is full; the last one is cut.
4. **Probe**: ``mechclaims.probe.train_probe`` on labelled sentences (toxic iff they contain a
   lexicon phrase), plus a decision threshold on the projection (fitted on the same texts)
   so that the accuracy can be recomputed on the shipped ``probe_eval.jsonl``.
5. **DPO**: TRL ``DPOTrainer`` on preference pairs (prompt = a provocation, chosen = a neutral
   answer, rejected = a toxic answer), the base as the frozen reference model, in the paper's
   regime: beta 0.1, a learning rate at most 1/100 of the pretraining peak, fp32, stopped by a
   fixed schedule where toxicity has fallen 40-70%. The training curve (toxicity on the
   challenge prompts every ``curve_every`` steps, loss and reward margin every step) goes in
   the manifest. GPT-2 also gets the same run through a PEFT LoRA adapter (``lora/``).
6. **Challenge prompts** ``prompts.jsonl`` (RealToxicityPrompts form) and a neutral
   ``heldout.txt``, both disjoint from the training prompts and the preference pairs.
7. **Acceptance figures**, every one measured by the engine (``mechclaims.stats`` generation
   and statistics pass, ``mechclaims.attribution``, ``mechclaims.perplexity``): toxicity
   (greedy, 20 new tokens, ``LexiconScorer`` on the continuation), held-out perplexity,
   probe accuracy, and the paper's attribution figures for the DPO pair.
8. **Derived recipes** (``derived.json``): identity, noise, and a dampening of the top
   toxic-aligned, positively activated neurons, chosen here so that toxicity falls >= 30%.
9. **Manifest**: seeds, sizes, versions, timings, figures and the sha256 of every file.

Every file is written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import corpus as C  # noqa: E402
from ..cache import atomic_write_text, sha256_file  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from . import ARCHS  # noqa: E402

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


# --------------------------------------------------------------------------------------------
# Files


def atomic_save_pretrained(model, tok, path: Path) -> None:
    """save_pretrained into a temporary sibling directory, then swap it in."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------
# Tokenizer and model


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["bos_token"], SPECIAL["eos_token"], SPECIAL["pad_token"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL, model_max_length=10_000)
    assert len({fast.bos_token_id, fast.eos_token_id, fast.pad_token_id}) == 3
    return fast


def make_model(cfg: BuildConfig, tok):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seeds["torch"])
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if cfg.arch == "gpt2":
        conf = GPT2Config(vocab_size=len(tok), n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_mlp,
                          activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, tie_word_embeddings=True, **ids)
        model = GPT2LMHeadModel(conf)
    else:
        conf = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.d_model,
                           intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layer,
                           num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                           max_position_embeddings=cfg.n_ctx, hidden_act="silu",
                           rms_norm_eps=1e-5, tie_word_embeddings=True, attention_dropout=0.0,
                           **ids)
        model = LlamaForCausalLM(conf)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


# --------------------------------------------------------------------------------------------
# Pretraining


def doc_ids(tok, doc: str) -> list[int]:
    return [tok.bos_token_id] + tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def windows(tok, gen: "C.Generator", n: int, n_ctx: int, docs_per_call: int = 256):
    """``n`` windows of ``n_ctx`` tokens; each starts at a document (BOS at position 0)."""
    out, pending = [], []
    while len(out) < n:
        if not pending:
            docs = [gen.document() for _ in range(docs_per_call)]
            enc = tok(docs, add_special_tokens=False)["input_ids"]
            pending = [[tok.bos_token_id] + e + [tok.eos_token_id] for e in enc]
            pending.reverse()
        w: list[int] = []
        while len(w) < n_ctx:
            if not pending:
                docs = [gen.document() for _ in range(docs_per_call)]
                enc = tok(docs, add_special_tokens=False)["input_ids"]
                pending = [[tok.bos_token_id] + e + [tok.eos_token_id] for e in enc]
                pending.reverse()
            w += pending.pop()
        out.append(w[:n_ctx])
    return out


def pretrain(model, tok, cfg: BuildConfig, log=print) -> dict:
    """Plain next-token training; returns the loss curve summary."""
    import torch

    gen = C.Generator(cfg.seeds["pretrain_corpus"])
    torch.manual_seed(cfg.seeds["torch"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.pretrain_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses = []
    t0 = time.time()
    torch.set_grad_enabled(True)
    for step in range(cfg.pretrain_steps):
        x = torch.tensor(windows(tok, gen, cfg.batch_size, cfg.n_ctx))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss))
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            log(f"  pretrain step {step:4d}/{cfg.pretrain_steps} loss {losses[-1]:.3f} "
                f"({time.time() - t0:.0f}s)")
    model.eval()
    n_tokens = cfg.pretrain_steps * cfg.batch_size * cfg.n_ctx
    return {"steps": cfg.pretrain_steps, "tokens": n_tokens, "first_loss": losses[0],
            "final_loss": sum(losses[-10:]) / len(losses[-10:])}


# --------------------------------------------------------------------------------------------
# Measurements: every figure the builder records comes from the engine


def eval_settings(cfg: BuildConfig, positions: str = "own"):
    """The statistics and generation settings of every measurement (the claims' defaults:
    greedy, ``max_new_tokens`` tokens, prompts cut to 32 tokens, BOS prepended)."""
    from ..stats import StatsSettings

    return StatsSettings(positions=positions, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.eval_batch_size)


def score_continuations(tok, cont, scorer) -> dict:
    """Toxicity of continuation tokens ``[n, T]`` (``mechclaims.scoring``)."""
    from ..scoring import decode_continuations

    texts = decode_continuations(tok, cont)
    scores = scorer.score(texts)
    return {"toxicity": float(scores.mean()), "scores": scores, "texts": texts}


def toxicity(model, tok, prompts: list[str], scorer, cfg: BuildConfig) -> dict:
    """Greedy continuations with the engine's generation (``mechclaims.stats.continuations``)
    scored by ``scorer``; ``model`` is a LoadedModel or a plain HF causal LM (a policy while
    it trains). The organisms' tokenizers have a BOS, which the engine prepends."""
    from ..stats import continuations

    return score_continuations(tok, continuations(model, tok, prompts, eval_settings(cfg)), scorer)


# --------------------------------------------------------------------------------------------
# Data sets


def make_prompts(cfg: BuildConfig, tok, exclude: set[str]) -> list[str]:
    """Held-out challenge prompts: a uniform grid over severity x temperament, deduplicated."""
    gen = C.Generator(cfg.seeds["prompts"])
    cells = [(s, t) for s in C.PROVOCATIONS for t in C.TEMPERS]
    out, seen = [], set(exclude)
    i = 0
    while len(out) < cfg.n_prompts:
        s, t = cells[i % len(cells)]
        i += 1
        p = gen.provocation(s, t).prompt
        if p in seen:
            continue
        if len(tok(p, add_special_tokens=False)["input_ids"]) > 31:
            continue
        seen.add(p)
        out.append(p)
    return out


def make_pairs(cfg: BuildConfig, n: int) -> list[dict]:
    gen = C.Generator(cfg.seeds["pairs"])
    pairs, seen = [], set()
    while len(pairs) < n:
        pv = gen.provocation()
        if pv.prompt in seen:
            continue
        seen.add(pv.prompt)
        pairs.append({"prompt": pv.prompt, "chosen": pv.neutral, "rejected": pv.toxic})
    return pairs


def make_probe_texts(seed: int, n: int) -> tuple[list[str], list[int]]:
    """Labelled sentences as the corpus has them: 80% provocation segments whose answer is
    toxic with the context's own probability, 20% segments of the neutral registers.

    The label is 1 iff the text contains a lexicon phrase. Because the answers follow the
    corpus distribution, toxic texts mostly come from severe or hot-tempered contexts, as in
    real data, so the probe reads the context that leads to insults as well as the insults.
    (A probe trained on a 50/50 split independent of the context reads only the insult words;
    no MLP neuron aligned with it affects whether the model starts an insult.)
    """
    gen = C.Generator(seed)
    texts, labels = [], []
    for _ in range(n):
        if gen.rng.random() < 0.8:
            t, _ = gen.provocation_text()
        else:
            t = gen.neutral_segment()
        texts.append(t)
        labels.append(int(C.is_toxic(t)))
    return texts, labels


# --------------------------------------------------------------------------------------------
# DPO


def train_dpo(base, tok, pairs: list[dict], cfg: BuildConfig, *, measure=None, lora: bool = False,
              log=print):
    """TRL ``DPOTrainer`` on ``pairs``; returns (trained model, summary with the curve).

    fp32 on purpose: TRL's ``DPOConfig`` defaults to ``bf16=True``, which on a CPU runs bf16
    autocast through a naive GEMM (~30x slower here) and is not the arithmetic of the paper's
    runs. ``measure(model) -> toxicity`` is called every ``cfg.curve_every`` steps and at the
    last step (the curve); loss and reward margin are logged every step. With ``lora``, the
    policy is a PEFT LoRA model (rank ``lora_r`` on ``lora_targets``, learning rate
    ``lora_lr``) and its reference is the base with the adapter disabled, as TRL does it.
    """
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    seed = cfg.seeds["lora" if lora else "dpo"]
    torch.manual_seed(seed)
    ds = datasets.Dataset.from_list([
        {"prompt": SPECIAL["bos_token"] + p["prompt"], "chosen": p["chosen"],
         "rejected": p["rejected"]} for p in pairs])
    policy = copy.deepcopy(base).train()
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                 target_modules=list(cfg.lora_targets), bias="none",
                                 task_type="CAUSAL_LM", fan_in_fan_out=cfg.arch == "gpt2")
    ref = None if lora else copy.deepcopy(base).eval()
    lr = cfg.lora_lr if lora else cfg.dpo_lr
    points: list[dict] = []

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if measure is not None and (step % cfg.curve_every == 0 or step == state.max_steps):
                was = model.training
                model.eval()
                points.append({"step": step, "toxicity": measure(model)})
                model.train(was)

    with tempfile.TemporaryDirectory(prefix="mechclaims-dpo-") as out:
        args = DPOConfig(
            output_dir=out, beta=cfg.dpo_beta, learning_rate=lr,
            per_device_train_batch_size=cfg.dpo_batch_size, num_train_epochs=cfg.dpo_epochs,
            lr_scheduler_type="linear", warmup_steps=cfg.dpo_warmup_steps, max_length=cfg.dpo_max_length,
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
            seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds,
                             processing_class=tok, peft_config=peft_config, callbacks=[Curve()])
        t0 = time.time()
        with torch.enable_grad():  # mechclaims.loading.load_model turns grad off globally
            result = trainer.train()
        seconds = time.time() - t0
        model = trainer.model
    model.eval()
    logged = {int(h["step"]): h for h in trainer.state.log_history if "loss" in h}
    curve = []
    tox_at = {p["step"]: p["toxicity"] for p in points}
    for step in sorted(set(logged) | set(tox_at)):
        h = logged.get(step, {})
        row = {"step": step, "learning_rate": h.get("learning_rate"), "loss": h.get("loss"),
               "reward_margin": h.get("rewards/margins"), "reward_accuracy": h.get("rewards/accuracies")}
        if step in tox_at:
            row["toxicity"] = tox_at[step]
        curve.append(row)
    hist = [logged[k] for k in sorted(logged)]
    log(f"  DPO{' (LoRA)' if lora else ''}: {result.global_step} steps in {seconds:.0f}s; "
        + (f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}; " if hist else "")
        + "toxicity " + " ".join(f"{p['toxicity']:.3f}" for p in points))
    summary = {"steps": int(result.global_step), "train_loss": float(result.training_loss),
               "lr": lr, "beta": cfg.dpo_beta, "batch_size": cfg.dpo_batch_size,
               "warmup_steps": cfg.dpo_warmup_steps, "scheduler": "linear", "precision": "fp32",
               "seconds": round(seconds, 1), "curve": curve}
    if lora:
        summary["lora"] = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": 0.0,
                           "target_modules": list(cfg.lora_targets)}
    return model, summary


def save_adapter(peft_model, path: Path, base_name: str) -> None:
    """The adapter alone (``adapter_config.json`` + ``adapter_model.safetensors``), its
    ``base_model_name_or_path`` set to ``base_name`` so the directory names its own base."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        peft_model.save_pretrained(tmp)
        conf = json.loads((tmp / "adapter_config.json").read_text())
        conf["base_model_name_or_path"] = base_name
        for key, value in conf.items():  # PEFT stores some lists from sets: hash-seed order
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                conf[key] = sorted(value)
        atomic_write_text(tmp / "adapter_config.json", json.dumps(conf, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            if f.name not in ("adapter_config.json", "adapter_model.safetensors"):
                f.unlink()  # PEFT's model card: boilerplate, not part of the model
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Derived: choosing the dampening recipe


def choose_dampening(engine: "_Engine", base_attr, base_tox: float, cfg: BuildConfig,
                     log=print) -> tuple[dict, dict]:
    """The smallest k such that dampening the top-k neurons (by cos(v, w) over all layers, ties
    by index, among those of the last ``dampen_layers`` layers with cos > 0 and base mean
    activation > 0 at the generated positions) lowers toxicity by ``dampen_target``.

    Every trial is one engine statistics pass (own mode) of the dampened candidate against the
    base, whose own statistics are read from the build's cache: the same pass gives the
    candidate's toxicity and the paper's shares, which are recorded.
    """
    from ..attribution import top_k_by_cos
    from .derived import dampen_recipe

    cos, act = base_attr.cos, base_attr.act_base
    L, D = cos.shape
    layers = list(range(L - (cfg.dampen_layers or L), L))
    order = top_k_by_cos(cos, cos.size)
    ok = ((cos > 0) & (act > 0)).ravel() & np.isin(np.arange(cos.size) // D, layers)
    cand = [(int(f // D), int(f % D)) for f in order if ok[f]]
    amount = cfg.dampen_amount if cfg.dampen_amount is not None else (
        4.0 if cfg.arch == "gpt2" else 0.2)
    ks = [k for k in (8, 16, 32, 64, 96, 128, 192, 256) if k < len(cand)] + [len(cand)]
    tried, chosen = [], None
    for k in ks[:cfg.dampen_max_trials]:
        recipe = dampen_recipe(cfg.arch, cand[:k], amount)
        run = engine.pair(engine.derived(recipe), "own")
        drop = 1 - run["toxicity"] / base_tox if base_tox else 0.0
        row = {"k": k, "amount": amount, "toxicity": run["toxicity"], "drop": drop,
               **run["attribution"]}
        tried.append(row)
        log(f"  dampen k={k:3d} amount={amount} toxicity {run['toxicity']:.3f} drop {drop:.2f} "
            f"v2 {row['v2_share']:.2f} TP- {row['tp_minus_share']:.2f}")
        chosen = (recipe, row)
        if drop >= cfg.dampen_target:
            break
    recipe, row = chosen
    info = {"chosen": row, "candidates": len(cand), "layers": layers, "tried": tried,
            "base_mean_act_positive": int((act > 0).sum()),
            "rule": "smallest k in 8, 16, 32, 64, 96, 128, 192, 256, all reaching the target drop "
            "(else the last tried); neurons ranked by cos(v, w) over all layers, ties by index"}
    return recipe, info


class _Engine:
    """The engine's measures on models of one build: statistics pass, attribution, toxicity of
    the continuations, perplexity. The base's own-mode statistics are cached once (in a
    temporary cache directory) and reused for every candidate."""

    def __init__(self, out: Path, cfg: BuildConfig, prompts, scorer, cache_dir: Path):
        from ..cache import ResultCache
        from ..loading import load_model
        from ..probe import load_probe

        self.out, self.cfg, self.prompts, self.scorer = out, cfg, prompts, scorer
        self.cache = ResultCache(cache_dir)
        self.base = load_model(str(out / "base"), memo=False)
        self.probe = load_probe(out / "probe.safetensors", d_model=self.base.d_model)

    def load(self, source):
        from ..loading import load_model

        return load_model(source, memo=False)

    def derived(self, recipe: dict):
        """A LoadedModel of the base edited by ``recipe`` (``derived.apply_recipe``)."""
        from ..loading import wrap_hf
        from ..sources import Source
        from .derived import apply_recipe, recipe_sha256

        hf = apply_recipe(copy.deepcopy(self.base.hf_model), recipe)
        return wrap_hf(hf, self.base.tokenizer,
                       Source("dir", f"{self.cfg.arch}-{recipe['kind']}",
                              sha256=recipe_sha256(self.base.sha256, recipe)))

    def pair(self, model, positions: str = "own") -> dict:
        """Statistics pass of (base, model): toxicities of both continuations and the paper's
        attribution figures (``attribution.summarize``)."""
        from .. import attribution, stats

        ps = stats.collect_pair(self.base, model, self.prompts, self.probe,
                                eval_settings(self.cfg, positions), cache=self.cache, progress=False)
        att = attribution.attribute(ps, attribution.weight_terms(self.base, model, self.probe))
        tok = self.base.tokenizer
        m = score_continuations(tok, ps.model.continuations, self.scorer)
        b = score_continuations(tok, ps.base.continuations, self.scorer)
        return {"toxicity": m["toxicity"], "base_toxicity": b["toxicity"], "texts": m["texts"],
                "base_texts": b["texts"], "attr": att,
                "attribution": summarise_attribution(attribution.summarize(att))}

    def ppl(self, model) -> float:
        from ..perplexity import perplexity

        return perplexity(model, self.out / "heldout.txt")["ppl"]


# --------------------------------------------------------------------------------------------
# The build


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


def build(out: str | Path, cfg: BuildConfig, log=print) -> dict:
    import torch

    from ..scoring import LexiconScorer

    t_start = time.time()
    timings: dict[str, float] = {}

    def lap(name, t0):
        timings[name] = round(time.time() - t0, 2)

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seeds["torch"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"building organism {cfg.arch} into {out}")

    # 1-2. corpus and tokenizer -------------------------------------------------------------
    t0 = time.time()
    g = C.Generator(cfg.seeds["tokenizer_corpus"])
    tok = train_tokenizer([g.document() for _ in range(cfg.n_tokenizer_docs)], cfg.vocab_size)
    atomic_write_text(out / "lexicon.txt", "".join(p + "\n" for p in C.TOXIC_LEXICON))
    scorer = LexiconScorer(out / "lexicon.txt")
    hg = C.Generator(cfg.seeds["heldout"])
    heldout = [hg.neutral_document() for _ in range(cfg.n_heldout_docs)]
    atomic_write_text(out / "heldout.txt", "".join(d + "\n" for d in heldout))
    pairs = make_pairs(cfg, cfg.n_pairs)
    prompts = make_prompts(cfg, tok, exclude={p["prompt"] for p in pairs})
    write_jsonl(out / "prompts.jsonl", [{"prompt": {"text": p}} for p in prompts])
    lap("corpus_tokenizer", t0)

    # 3. base ---------------------------------------------------------------------------------
    t0 = time.time()
    base = make_model(cfg, tok)
    n_params = sum(p.numel() for p in base.parameters())
    log(f"  {cfg.arch}: {n_params:,} parameters, vocab {len(tok)}")
    pre = pretrain(base, tok, cfg, log)
    atomic_save_pretrained(base, tok, out / "base")
    lap("pretrain", t0)

    # 4. probe --------------------------------------------------------------------------------
    t0 = time.time()
    from ..loading import load_model
    from ..probe import pooled_features, train_probe

    lm = load_model(str(out / "base"), memo=False)
    texts, labels = make_probe_texts(cfg.seeds["probe_texts"], cfg.n_probe_texts)
    probe = train_probe(lm, texts, labels, seed=cfg.seed)
    w = probe.direction.numpy()
    proj = pooled_features(lm, texts) @ w
    threshold = _best_threshold(proj, np.asarray(labels))
    probe.metadata["threshold"] = threshold
    probe.metadata["organism"] = cfg.arch
    probe.metadata["model_source"] = f"organism:{cfg.arch}-base"  # not the build directory: same bytes anywhere
    probe.save(out / "probe.safetensors")
    ev_texts, ev_labels = make_probe_texts(cfg.seeds["probe_eval"], cfg.n_probe_eval)
    write_jsonl(out / "probe_eval.jsonl", [{"text": t, "label": y} for t, y in zip(ev_texts, ev_labels)])
    ev_acc = float(((pooled_features(lm, ev_texts) @ w > threshold).astype(int)
                    == np.asarray(ev_labels)).mean())
    lap("probe", t0)
    log(f"  probe: held-out accuracy {probe.metadata['heldout_accuracy']:.3f}, "
        f"shipped eval set {ev_acc:.3f}")

    # 5. DPO (and its LoRA twin), with the toxicity curve ------------------------------------------
    t0 = time.time()
    base_curve_tox = toxicity(lm, tok, prompts, scorer, cfg)["toxicity"]
    del lm

    def measure(model):
        return toxicity(model, tok, prompts, scorer, cfg)["toxicity"]

    dpo, dpo_summary = train_dpo(base, tok, pairs, cfg, measure=measure, log=log)
    atomic_save_pretrained(dpo, tok, out / "dpo")
    del dpo
    lap("dpo", t0)
    lora_summary = None
    if cfg.lora:
        t0 = time.time()
        peft_model, lora_summary = train_dpo(base, tok, pairs, cfg, measure=measure, lora=True, log=log)
        save_adapter(peft_model, out / "lora", f"organism:{cfg.arch}-base")
        del peft_model
        lap("lora", t0)
    for summary in filter(None, (dpo_summary, lora_summary)):
        summary["curve"].insert(0, {"step": 0, "toxicity": base_curve_tox})
        for row in summary["curve"]:
            if "toxicity" in row:
                row["reduction"] = 1 - row["toxicity"] / base_curve_tox if base_curve_tox else None

    # 7. acceptance figures, by the engine -------------------------------------------------------
    t0 = time.time()
    cache_dir = Path(tempfile.mkdtemp(prefix="mechclaims-build-cache-"))
    try:
        engine = _Engine(out, cfg, prompts, scorer, cache_dir)
        dpo_lm = engine.load(str(out / "dpo"))
        run = engine.pair(dpo_lm, "own")
        tb, td = run["base_toxicity"], run["toxicity"]
        pb, pd = engine.ppl(engine.base), engine.ppl(dpo_lm)
        red = 1 - td / tb if tb > 0 else 0.0
        acceptance = {
            "base_toxicity": tb, "dpo_toxicity": td, "relative_reduction": red,
            "ppl_base": pb, "ppl_dpo": pd, "ppl_ratio": pd / pb,
            "dpo_lr_ratio": cfg.dpo_lr / cfg.lr, "n_neurons": cfg.n_layer * cfg.d_mlp,
            "top128_fraction": 128 / (cfg.n_layer * cfg.d_mlp),
            "probe_heldout_accuracy": probe.metadata["heldout_accuracy"],
            "probe_eval_accuracy": ev_acc, "probe_threshold": threshold,
            "n_prompts": len(prompts), "dpo_attribution_own": run["attribution"],
        }
        samples = [{"prompt": prompts[i], "base": run["base_texts"][i], "dpo": run["texts"][i]}
                   for i in range(min(6, len(prompts)))]
        log(f"  toxicity base {tb:.3f} dpo {td:.3f} (reduction {red:.2f}); ppl {pb:.3f} -> {pd:.3f}; "
            f"engine attribution (own): {run['attribution']['v2_share']:.3f} v2 share")
        base_attr = run["attr"]
        del dpo_lm, run
        if lora_summary is not None:
            lora_lm = engine.load(_lora_source(out))
            lrun = engine.pair(lora_lm, "own")
            lora_summary.update({
                "toxicity": lrun["toxicity"], "relative_reduction": 1 - lrun["toxicity"] / tb if tb else 0.0,
                "ppl": engine.ppl(lora_lm), "attribution_own": lrun["attribution"],
                "adapter_bytes": (out / "lora" / "adapter_model.safetensors").stat().st_size})
            lora_summary["ppl_ratio"] = lora_summary["ppl"] / pb
            log(f"  LoRA: toxicity {lrun['toxicity']:.3f} (reduction {lora_summary['relative_reduction']:.2f}), "
                f"ppl ratio {lora_summary['ppl_ratio']:.3f}")
            del lora_lm, lrun
        lap("evaluate", t0)

        # 8. derived recipes ------------------------------------------------------------------------
        t0 = time.time()
        recipe, damp_info = choose_dampening(engine, base_attr, tb, cfg, log)
        recipes = {"dampened": recipe, "identity": {"kind": "identity"},
                   "noise": {"kind": "noise", "seed": cfg.seeds["noise"], "rel_std": cfg.noise_rel_std}}
        atomic_write_text(out / "derived.json", json.dumps(recipes, indent=1) + "\n")
        damp = engine.derived(recipe)
        noise = engine.derived(recipes["noise"])
        derived = {
            "dampened": {"toxicity": damp_info["chosen"]["toxicity"], "drop": damp_info["chosen"]["drop"],
                         "ppl": engine.ppl(damp), "selection": damp_info},
            "noise": {"toxicity": toxicity(noise, tok, prompts, scorer, cfg)["toxicity"]},
            "identity": {"toxicity": tb},
        }
        derived["dampened"]["ppl_ratio"] = derived["dampened"]["ppl"] / pb
        lap("derived", t0)
        if cfg.engine_check:
            t0 = time.time()
            derived["dampened"]["attribution"] = {
                "own": damp_info["chosen"] | {},
                "shared": engine.pair(damp, "shared")["attribution"]}
            for key in ("k", "amount", "toxicity", "drop"):
                derived["dampened"]["attribution"]["own"].pop(key, None)
            log(f"  engine attribution (shared) of the dampened pair: {derived['dampened']['attribution']['shared']}")
            lap("engine_check", t0)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    # 9. manifest ---------------------------------------------------------------------------------
    build_seconds = round(time.time() - t_start, 1)
    T = THRESHOLDS
    passed = {
        "base_toxicity": tb >= T["base_toxicity_min"],
        "relative_reduction": T["relative_reduction_min"] <= red <= T["relative_reduction_max"],
        "ppl_ratio": acceptance["ppl_ratio"] <= T["ppl_ratio_max"],
        "probe_accuracy": min(acceptance["probe_heldout_accuracy"], ev_acc) >= T["probe_accuracy_min"],
        "dampened_drop": derived["dampened"]["drop"] >= T["dampened_drop_min"],
        "dpo_lr_ratio": acceptance["dpo_lr_ratio"] <= T["dpo_lr_ratio_max"],
        "neurons": acceptance["n_neurons"] >= T["min_neurons"][cfg.arch],
    }
    if lora_summary is not None:
        passed["lora_relative_reduction"] = (
            T["relative_reduction_min"] <= lora_summary["relative_reduction"] <= T["relative_reduction_max"])
        passed["lora_ppl_ratio"] = lora_summary["ppl_ratio"] <= T["ppl_ratio_max"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "arch": cfg.arch,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": build_seconds,
        "timings": timings,
        "host": {"platform": platform.platform(), "cpu_threads": cfg.threads},
        "config": asdict(cfg),
        "seeds": cfg.seeds,
        "sizes": {"n_params": n_params, "vocab": len(tok), "n_layer": cfg.n_layer,
                  "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_ctx": cfg.n_ctx,
                  "n_neurons": cfg.n_layer * cfg.d_mlp,
                  "pretrain_tokens": pre["tokens"], "n_prompts": len(prompts),
                  "n_pairs": len(pairs), "n_heldout_docs": len(heldout),
                  "n_probe_texts": len(texts), "n_probe_eval": len(ev_texts),
                  "lexicon_phrases": len(C.TOXIC_LEXICON), "corpus_word_types":
                  len(C.word_types()), "corpus_templates": C.n_templates()},
        "versions": versions(),
        "pretrain": pre,
        "dpo": {"epochs": cfg.dpo_epochs, **dpo_summary},
        **({"lora": lora_summary} if lora_summary is not None else {}),
        "evaluation": {"decoding": "greedy, exactly max_new_tokens new tokens, EOS does not stop "
                       "(mechclaims.stats.greedy_generate)",
                       "max_new_tokens": cfg.max_new_tokens, "prompt": "BOS + first 32 tokens, "
                       "left-padded", "scorer": "lexicon (continuation tokens only)",
                       "perplexity": "mechclaims.perplexity over heldout.txt (the claims' default text)",
                       "attribution": "mechclaims.stats.collect_pair + mechclaims.attribution, own positions"},
        "acceptance": acceptance,
        "thresholds": THRESHOLDS,
        "passed": passed,
        "derived": derived,
        "samples": samples,
    }
    files = {}
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.name != "manifest.json" and not f.name.startswith("."):
            files[f.relative_to(out).as_posix()] = sha256_file(f)
    manifest["files"] = files
    manifest["weights_bytes"] = sum((out / r).stat().st_size for r in files
                                    if r.endswith(".safetensors"))
    atomic_write_text(out / "manifest.json", json.dumps(_jsonable(manifest), indent=1) + "\n")
    log(f"  done in {build_seconds:.0f}s; passed: {passed}")
    return manifest


def _lora_source(out: Path):
    """The LoRA adapter on the just-built base, as the engine's adapter source."""
    from ..sources import Source

    return Source("adapter", str(out / "lora"), Source("dir", str(out / "base")))


def _best_threshold(proj, labels) -> float:
    order = np.sort(proj)
    cuts = np.concatenate([[order[0] - 1], (order[1:] + order[:-1]) / 2, [order[-1] + 1]])
    accs = [((proj > c).astype(int) == labels).mean() for c in cuts]
    return float(cuts[int(np.argmax(accs))])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summarise_attribution(summary: dict) -> dict:
    """The figures the dampened pair is chosen for, from ``attribution.summarize``."""
    v2 = summary["toxic_neurons_v2"]
    return _jsonable({
        "v2_share": v2["share"], "v2_n_selected": v2["n_selected"],
        "tp_minus_share": summary["group_a_share"]["TP-"],
        "group_a_share": summary["group_a_share"], "group_b_share": summary["group_b_share"],
        "net": summary["net"], "gross_reduction": summary["gross_reduction"],
    })


def check(out: str | Path) -> list[str]:
    """Problems with an organism directory: files missing, changed, or not in the manifest."""
    out = Path(out)
    mf = out / "manifest.json"
    if not mf.is_file():
        return [f"{mf} does not exist; build the organism first."]
    manifest = json.loads(mf.read_text())
    problems = []
    for rel, sha in manifest.get("files", {}).items():
        f = out / rel
        if not f.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(f) != sha:
            problems.append(f"changed: {rel} (sha256 differs from the manifest)")
    listed = set(manifest.get("files", {}))
    for f in sorted(out.rglob("*")):
        rel = f.relative_to(out).as_posix()
        if f.is_file() and rel != "manifest.json" and rel not in listed and not f.name.startswith("."):
            problems.append(f"not in the manifest: {rel}")
    return problems


def main_build(arch: str, out: str, micro: bool = False, seed: int | None = None) -> dict:
    cfg = BuildConfig.micro(arch) if micro else BuildConfig.default(arch)
    if seed is not None:
        cfg.seed = seed
    return build(out, cfg, log=lambda s: print(s, file=sys.stderr, flush=True))


__all__ = ["BuildConfig", "build", "check", "sha256_file"]
