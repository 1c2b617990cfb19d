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
   answer, rejected = a toxic answer), the base as the frozen reference model.
6. **Challenge prompts** ``prompts.jsonl`` (RealToxicityPrompts form) and a neutral
   ``heldout.txt``, both disjoint from the training prompts and the preference pairs.
7. **Acceptance figures**: toxicity (greedy, 20 new tokens, left-padded prompts with BOS,
   ``LexiconScorer`` on the continuation tokens only), held-out perplexity, probe accuracy.
8. **Derived recipes** (``derived.json``): identity, noise, and a dampening of the top
   toxic-aligned, positively activated neurons, chosen here so that toxicity falls >= 30%.
9. **Manifest**: seeds, sizes, versions, timings, figures and the sha256 of every file.

Every file is written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import copy
import hashlib
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import corpus as C  # noqa: E402
from ..cache import atomic_write_text, sha256_file  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from . import ARCHS  # noqa: E402

MANIFEST_FORMAT = 1
SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
THRESHOLDS = {
    "base_toxicity_min": 0.30,
    "relative_reduction_min": 0.50,
    "ppl_ratio_max": 1.10,
    "probe_accuracy_min": 0.90,
    "dampened_drop_min": 0.30,
}


@dataclass
class BuildConfig:
    arch: str = "gpt2"
    seed: int = 20241109
    vocab_size: int = 1024
    n_layer: int = 4
    d_model: int = 128
    d_mlp: int = 512
    n_head: int = 4
    n_ctx: int = 128
    pretrain_steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    n_tokenizer_docs: int = 4000
    n_heldout_docs: int = 300
    n_prompts: int = 600
    n_pairs: int = 2400
    n_probe_texts: int = 1200
    n_probe_eval: int = 400
    dpo_beta: float = 0.1
    dpo_lr: float = 2e-5
    dpo_epochs: int = 1
    dpo_batch_size: int = 32
    dpo_max_length: int = 96
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
        if arch == "gpt2":
            return cls(arch="gpt2")
        if arch == "llama":
            return cls(arch="llama", d_mlp=384)
        raise ConfigError(f"unknown arch {arch!r}; expected one of {ARCHS}.")

    @classmethod
    def v2(cls, arch: str) -> "BuildConfig":
        """Organism v2 (issue #11): >= 8,192 (GPT-2) / 4,096 (Llama) MLP neurons and a partial DPO.

        Measured with build.py's own functions, 1 thread (docs/organism-v2-experiments.md):
        gpt2 4x96x2048: DPO toxicity 0.872 -> 0.392 (-55%), ppl ratio 0.999, probe 0.958/0.953,
        dampened k=256 drop 0.52; llama 4x128x1024: see the experiments log (dampening needs amount -1.0,
        i.e. the activation's sign flipped; 0.0 on all 1,048 candidates only reaches 0.29).
        The figures assume fp32 DPO: ``train_dpo`` must pass ``bf16=False`` to ``DPOConfig``
        (TRL defaults to bf16 autocast, which on CPU is ~10x slower at these sizes and was not
        what was measured).
        """
        base = cls.default(arch)
        if arch == "gpt2":
            over = dict(n_layer=4, d_model=96, d_mlp=2048, n_head=4, pretrain_steps=300,
                        n_pairs=640, dpo_lr=5.5e-6)
        else:
            over = dict(n_layer=4, d_model=128, d_mlp=1024, n_head=4, pretrain_steps=300,
                        n_pairs=640, dpo_lr=2.5e-5, dampen_amount=-1.0)
        return cls(**{**asdict(base), **over})

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
                "probe_eval": s + 7, "noise": s + 8, "dpo": s + 9}


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
# Measurements


def perplexity(model, tok, docs: list[str], batch_size: int = 32) -> dict:
    """exp(mean NLL) over every token after BOS (EOS included), one document per sequence
    (cut to the model's context length)."""
    import torch

    n_ctx = _n_ctx(model)
    seqs = [doc_ids(tok, d)[:n_ctx] for d in docs]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), tok.pad_token_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, s in enumerate(chunk):
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.double()
            lp = torch.log_softmax(logits[:, :-1], -1)
            nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
            m = mask[:, 1:].double()
            total += float((nll * m).sum())
            count += int(m.sum())
    return {"ppl": math.exp(total / count), "tokens": count}


def _n_ctx(model) -> int:
    c = model.config
    return int(getattr(c, "n_positions", None) or c.max_position_embeddings)


def encode_prompt_batch(tok, prompts: list[str], max_prompt_tokens: int = 32):
    """BOS + the first ``max_prompt_tokens`` tokens, left-padded: (ids, mask)."""
    import torch

    seqs = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"][:max_prompt_tokens]
            for p in prompts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, width - len(s):] = torch.tensor(s)
        mask[j, width - len(s):] = 1
    return ids, mask


def generate(model, tok, prompts: list[str], max_new_tokens: int = 20, batch_size: int = 100):
    """Greedy continuations (exactly ``max_new_tokens`` tokens; EOS does not stop it).

    Returns (texts, token lists): the continuation decoded with special tokens skipped.
    """
    import torch

    texts, toks = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            ids, mask = encode_prompt_batch(tok, prompts[i:i + batch_size])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=None,
                                 num_beams=1)
            cont = out[:, ids.shape[1]:]
            toks += cont.tolist()
            texts += tok.batch_decode(cont, skip_special_tokens=True)
    return texts, toks


def toxicity(model, tok, prompts: list[str], scorer, max_new_tokens: int = 20,
             batch_size: int = 100) -> dict:
    texts, toks = generate(model, tok, prompts, max_new_tokens, batch_size)
    scores = scorer.score(texts)
    return {"toxicity": float(scores.mean()), "scores": scores, "texts": texts, "tokens": toks}


def mlp_acts_at_generated(model, tok, prompts, continuations, batch_size: int = 100):
    """Mean MLP activation per neuron [L, d_mlp] (float64) at the positions that produce the
    continuation: last prompt position + generated positions 1..T-1 (as ``mechclaims.stats``).

    GPT-2: the GELU output (input of ``c_proj``); Llama: the input of ``down_proj``.
    """
    import torch

    from .derived import is_gated, mlp_modules

    mlps = mlp_modules(model)
    sums = None
    count = 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            ids, mask = encode_prompt_batch(tok, prompts[i:i + batch_size])
            cont = torch.tensor(continuations[i:i + batch_size])
            T = cont.shape[1]
            full = torch.cat([ids, cont[:, :-1]], 1)
            fmask = torch.cat([mask, torch.ones_like(cont[:, :-1])], 1)
            store = {}
            handles = []
            for layer, mlp in enumerate(mlps):
                if is_gated(model):
                    handles.append(mlp.down_proj.register_forward_pre_hook(
                        lambda mod, args, layer=layer, store=store: store.__setitem__(layer, args[0])))
                else:
                    handles.append(mlp.act.register_forward_hook(
                        lambda mod, args, out, layer=layer, store=store: store.__setitem__(layer, out)))
            pos = (fmask.cumsum(-1) - 1).clamp(min=0)
            try:
                model(input_ids=full, attention_mask=fmask, position_ids=pos)
            finally:
                for h in handles:
                    h.remove()
            sel = slice(ids.shape[1] - 1, ids.shape[1] - 1 + T)
            a = torch.stack([store[layer][:, sel].double().sum((0, 1)) for layer in range(len(mlps))])
            sums = a if sums is None else sums + a
            count += cont.shape[0] * T
    return (sums / count).numpy()


def value_cos(model, direction):
    """(cos(v, w) [L, d_mlp], [v . w_hat per layer]) in float64, raw HF value vectors."""
    import torch

    from .derived import is_gated, mlp_modules

    w = torch.as_tensor(direction, dtype=torch.float64)
    w = w / w.norm()
    cos, proj = [], []
    with torch.no_grad():
        for mlp in mlp_modules(model):
            W = (mlp.down_proj.weight.T if is_gated(model) else mlp.c_proj.weight).double()
            proj.append((W @ w).numpy())
            cos.append(((W @ w) / W.norm(dim=1)).numpy())
    import numpy as np

    return np.stack(cos), proj


def shares_from_means(cos, proj, m_pre, m_new, top_k: int = 128) -> dict:
    """The paper's shares for a candidate whose value vectors equal the base's.

    delta_i = (m_pre - m_new) * (v_i . w_hat). v2: sum of delta over the top-``top_k`` neurons
    by cos with m_pre > 0 and adiff > 0, over all positive deltas. Definition A TP- share:
    sum of delta over TP- over the sum over the four reducing groups.
    """
    import numpy as np

    proj = np.stack(proj)
    adiff = m_pre - m_new
    delta = adiff * proj
    pos = delta[delta > 0].sum()
    flat = np.argsort(-cos, axis=None)[:top_k]
    top = np.zeros(cos.size, bool)
    top[flat] = True
    top = top.reshape(cos.shape)
    v2 = delta[top & (m_pre > 0) & (adiff > 0)].sum() / pos if pos > 0 else float("nan")
    tp = (cos > 0) & (m_pre > 0) & (adiff > 0)
    tn = (cos > 0) & (m_pre < 0) & (adiff > 0)
    ap = (cos < 0) & (m_pre > 0) & (adiff < 0)
    an = (cos < 0) & (m_pre < 0) & (adiff < 0)
    four = delta[tp | tn | ap | an].sum()
    return {"v2_share": float(v2), "tp_minus_share": float(delta[tp].sum() / four) if four else
            float("nan"), "gross_reduction": float(pos)}


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


def train_dpo(base, tok, pairs: list[dict], cfg: BuildConfig, log=print):
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    torch.manual_seed(cfg.seeds["dpo"])
    ds = datasets.Dataset.from_list([
        {"prompt": SPECIAL["bos_token"] + p["prompt"], "chosen": p["chosen"],
         "rejected": p["rejected"]} for p in pairs])
    policy = copy.deepcopy(base).train()
    ref = copy.deepcopy(base).eval()
    with tempfile.TemporaryDirectory(prefix="mechclaims-dpo-") as out:
        args = DPOConfig(
            output_dir=out, beta=cfg.dpo_beta, learning_rate=cfg.dpo_lr,
            per_device_train_batch_size=cfg.dpo_batch_size, num_train_epochs=cfg.dpo_epochs,
            lr_scheduler_type="linear", warmup_steps=5, max_length=cfg.dpo_max_length,
            logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
            seed=cfg.seeds["dpo"], data_seed=cfg.seeds["dpo"], disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds,
                             processing_class=tok)
        t0 = time.time()
        with torch.enable_grad():  # mechclaims.loading.load_model turns grad off globally
            result = trainer.train()
        hist = [h for h in trainer.state.log_history if "loss" in h]
        log(f"  DPO: {result.global_step} steps in {time.time() - t0:.0f}s; "
            f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}" if hist else "  DPO done")
        model = trainer.model
    model.eval()
    summary = {"steps": int(result.global_step), "train_loss": float(result.training_loss)}
    if hist:
        summary.update({"first_logged": hist[0], "last_logged": hist[-1]})
    return model, summary


# --------------------------------------------------------------------------------------------
# Derived: choosing the dampening recipe


def choose_dampening(base, tok, prompts, scorer, direction, base_tox: dict, cfg: BuildConfig,
                     log=print) -> tuple[dict, dict]:
    """The smallest k such that dampening the top-k neurons (by cos(v, w), among those of the
    last ``dampen_layers`` layers with cos > 0 and base mean activation > 0 at the generated
    positions) by ``dampen_amount`` lowers toxicity by at least ``dampen_target``.

    k runs over 8, 16, 32, 64, 96, 128, 192, 256, all (at most ``dampen_max_trials`` tries). Each try is also scored
    with the paper's own-mode shares (``shares_from_means``), which are recorded.
    """
    from .derived import apply_recipe, dampen_recipe

    m_pre = mlp_acts_at_generated(base, tok, prompts, base_tox["tokens"], cfg.eval_batch_size)
    cos, proj = value_cos(base, direction)
    L = cos.shape[0]
    layers = list(range(L - (cfg.dampen_layers or L), L))
    cand = [(l, i) for l in layers for i in range(cos.shape[1]) if cos[l, i] > 0 and m_pre[l, i] > 0]
    cand.sort(key=lambda li: -cos[li])
    amount = cfg.dampen_amount if cfg.dampen_amount is not None else (
        4.0 if cfg.arch == "gpt2" else 0.2)
    ks = [k for k in (8, 16, 32, 64, 96, 128, 192, 256) if k < len(cand)] + [len(cand)]
    tried, chosen = [], None
    for k in ks[:cfg.dampen_max_trials]:
        recipe = dampen_recipe(cfg.arch, cand[:k], amount)
        model = apply_recipe(copy.deepcopy(base), recipe)
        tox = toxicity(model, tok, prompts, scorer, cfg.max_new_tokens, cfg.eval_batch_size)
        drop = 1 - tox["toxicity"] / base_tox["toxicity"] if base_tox["toxicity"] else 0.0
        m_new = mlp_acts_at_generated(model, tok, prompts, tox["tokens"], cfg.eval_batch_size)
        row = {"k": k, "amount": amount, "toxicity": tox["toxicity"], "drop": drop,
               **shares_from_means(cos, proj, m_pre, m_new)}
        tried.append(row)
        log(f"  dampen k={k:3d} amount={amount} toxicity {tox['toxicity']:.3f} drop {drop:.2f} "
            f"v2 {row['v2_share']:.2f} TP- {row['tp_minus_share']:.2f}")
        chosen = (recipe, row)
        if drop >= cfg.dampen_target:
            break
    recipe, row = chosen
    info = {"chosen": row, "candidates": len(cand), "layers": layers, "tried": tried,
            "base_mean_act_positive": int((m_pre > 0).sum()),
            "rule": "smallest k in 8, 16, 32, 64, 96, 128, 192, 256, all reaching the target drop "
            "(else the last tried)"}
    return recipe, info


# --------------------------------------------------------------------------------------------
# The build


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "trl", "accelerate", "datasets",
                "safetensors", "numpy", "scikit-learn", "transformer-lens", "mechclaims"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def build(out: str | Path, cfg: BuildConfig, log=print) -> dict:
    import numpy as np
    import torch

    from ..scoring import LexiconScorer
    from .derived import apply_recipe

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

    lm = load_model(str(out / "base"))
    texts, labels = make_probe_texts(cfg.seeds["probe_texts"], cfg.n_probe_texts)
    probe = train_probe(lm, texts, labels, seed=cfg.seed)
    w = probe.direction.numpy()
    proj = pooled_features(lm, texts) @ w
    threshold = _best_threshold(proj, np.asarray(labels))
    probe.metadata["threshold"] = threshold
    probe.metadata["organism"] = cfg.arch
    probe.save(out / "probe.safetensors")
    ev_texts, ev_labels = make_probe_texts(cfg.seeds["probe_eval"], cfg.n_probe_eval)
    write_jsonl(out / "probe_eval.jsonl", [{"text": t, "label": y} for t, y in zip(ev_texts, ev_labels)])
    ev_acc = float(((pooled_features(lm, ev_texts) @ w > threshold).astype(int)
                    == np.asarray(ev_labels)).mean())
    del lm
    lap("probe", t0)
    log(f"  probe: held-out accuracy {probe.metadata['heldout_accuracy']:.3f}, "
        f"shipped eval set {ev_acc:.3f}")

    # 5. DPO ----------------------------------------------------------------------------------
    t0 = time.time()
    dpo, dpo_summary = train_dpo(base, tok, pairs, cfg, log)
    atomic_save_pretrained(dpo, tok, out / "dpo")
    lap("dpo", t0)

    # 7. acceptance figures --------------------------------------------------------------------
    t0 = time.time()
    base, tok = _reload(out / "base")
    dpo, _ = _reload(out / "dpo")
    tb = toxicity(base, tok, prompts, scorer, cfg.max_new_tokens, cfg.eval_batch_size)
    td = toxicity(dpo, tok, prompts, scorer, cfg.max_new_tokens, cfg.eval_batch_size)
    pb = perplexity(base, tok, heldout)
    pd = perplexity(dpo, tok, heldout)

    red = 1 - td["toxicity"] / tb["toxicity"] if tb["toxicity"] > 0 else 0.0
    acceptance = {
        "base_toxicity": tb["toxicity"], "dpo_toxicity": td["toxicity"],
        "relative_reduction": red, "ppl_base": pb["ppl"], "ppl_dpo": pd["ppl"],
        "ppl_ratio": pd["ppl"] / pb["ppl"], "ppl_tokens": pb["tokens"],
        "probe_heldout_accuracy": probe.metadata["heldout_accuracy"],
        "probe_eval_accuracy": ev_acc, "probe_threshold": threshold,
        "n_prompts": len(prompts),
    }
    lap("evaluate", t0)
    log(f"  toxicity base {tb['toxicity']:.3f} dpo {td['toxicity']:.3f} (reduction {red:.2f}); "
        f"ppl {pb['ppl']:.3f} -> {pd['ppl']:.3f}")
    samples = [{"prompt": prompts[i], "base": tb["texts"][i], "dpo": td["texts"][i]}
               for i in range(min(6, len(prompts)))]

    # 8. derived recipes ------------------------------------------------------------------------
    t0 = time.time()
    recipe, damp_info = choose_dampening(base, tok, prompts, scorer, w, tb, cfg, log)
    recipes = {"dampened": recipe, "identity": {"kind": "identity"},
               "noise": {"kind": "noise", "seed": cfg.seeds["noise"], "rel_std": cfg.noise_rel_std}}
    atomic_write_text(out / "derived.json", json.dumps(recipes, indent=1) + "\n")
    damp = apply_recipe(copy.deepcopy(base), recipe)
    tdamp = toxicity(damp, tok, prompts, scorer, cfg.max_new_tokens, cfg.eval_batch_size)
    noise = apply_recipe(copy.deepcopy(base), recipes["noise"])
    tnoise = toxicity(noise, tok, prompts, scorer, cfg.max_new_tokens, cfg.eval_batch_size)
    derived = {
        "dampened": {"toxicity": tdamp["toxicity"],
                     "drop": 1 - tdamp["toxicity"] / tb["toxicity"] if tb["toxicity"] else 0.0,
                     "ppl": perplexity(damp, tok, heldout)["ppl"],
                     "selection": damp_info},
        "noise": {"toxicity": tnoise["toxicity"]},
        "identity": {"toxicity": tb["toxicity"]},
    }
    lap("derived", t0)
    if cfg.engine_check:
        t0 = time.time()
        derived["dampened"]["attribution"] = engine_shares(out, cfg, damp, tok, prompts, log)
        lap("engine_check", t0)

    # 9. manifest ---------------------------------------------------------------------------------
    build_seconds = round(time.time() - t_start, 1)
    passed = {
        "base_toxicity": acceptance["base_toxicity"] >= THRESHOLDS["base_toxicity_min"],
        "relative_reduction": red >= THRESHOLDS["relative_reduction_min"],
        "ppl_ratio": acceptance["ppl_ratio"] <= THRESHOLDS["ppl_ratio_max"],
        "probe_accuracy": min(acceptance["probe_heldout_accuracy"], ev_acc)
        >= THRESHOLDS["probe_accuracy_min"],
        "dampened_drop": derived["dampened"]["drop"] >= THRESHOLDS["dampened_drop_min"],
    }
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
                  "pretrain_tokens": pre["tokens"], "n_prompts": len(prompts),
                  "n_pairs": len(pairs), "n_heldout_docs": len(heldout),
                  "n_probe_texts": len(texts), "n_probe_eval": len(ev_texts),
                  "lexicon_phrases": len(C.TOXIC_LEXICON), "corpus_word_types":
                  len(C.word_types()), "corpus_templates": C.n_templates()},
        "versions": versions(),
        "pretrain": pre,
        "dpo": {"beta": cfg.dpo_beta, "lr": cfg.dpo_lr, "epochs": cfg.dpo_epochs, **dpo_summary},
        "evaluation": {"decoding": "greedy, exactly max_new_tokens new tokens, EOS does not stop",
                       "max_new_tokens": cfg.max_new_tokens, "prompt": "BOS + first 32 tokens, "
                       "left-padded", "scorer": "lexicon (continuation tokens only)",
                       "perplexity": "exp(mean NLL) over heldout.txt, one document per line, "
                       "tokens after BOS incl. EOS"},
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


def _best_threshold(proj, labels) -> float:
    import numpy as np

    order = np.sort(proj)
    cuts = np.concatenate([[order[0] - 1], (order[1:] + order[:-1]) / 2, [order[-1] + 1]])
    accs = [((proj > c).astype(int) == labels).mean() for c in cuts]
    return float(cuts[int(np.argmax(accs))])


def _reload(path: Path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    return (AutoModelForCausalLM.from_pretrained(path).eval(),
            PreTrainedTokenizerFast.from_pretrained(path))


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def loaded_from_hf(hf, tok, label: str, sha256: str):
    """A ``mechclaims.loading.LoadedModel`` around an HF model already in memory (the engine's
    own wrapper, hook points included)."""
    from ..loading import wrap_hf
    from ..sources import Source

    return wrap_hf(hf, tok, Source("dir", label, sha256=sha256))


def engine_shares(out: Path, cfg: BuildConfig, damp, tok, prompts, log=print) -> dict:
    """The paper's measures on (base, dampened) with the engine's stats and attribution."""
    from .. import attribution, stats
    from ..loading import load_model
    from ..probe import load_probe

    res = {}
    base_lm = load_model(str(out / "base"))
    d_lm = loaded_from_hf(copy.deepcopy(damp), tok, f"{cfg.arch}-dampened",
                          hashlib.sha256(json.dumps(
                              json.loads((out / "derived.json").read_text())).encode()).hexdigest())
    probe = load_probe(out / "probe.safetensors", d_model=base_lm.d_model)
    for mode in ("own", "shared"):
        settings = stats.StatsSettings(positions=mode)
        ps = stats.collect_pair(base_lm, d_lm, prompts, probe, settings, progress=False)
        att = attribution.attribute(ps, attribution.weight_terms(base_lm, d_lm, probe))
        res[mode] = summarise_attribution(attribution.summarize(att))
        log(f"  engine attribution ({mode}): {res[mode]}")
    return res


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
