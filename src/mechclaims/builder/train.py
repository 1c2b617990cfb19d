"""Training: the tokenizer, the base model from scratch (``pretrain``), DPO with TRL (full and
LoRA), and saving what is trained (every file written atomically)."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..cache import atomic_write_text
from . import corpus as C
from .config import SPECIAL, BuildConfig


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
        w: list[int] = []
        while len(w) < n_ctx:
            if not pending:  # the next batch of documents, encoded at once
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
# DPO


def train_dpo(base, tok, pairs: list[dict], cfg: BuildConfig, *, measure=None, lora: bool = False,
              sft_weight: float = 0.0, log=print):
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
            # DPO plus ``sft_weight`` x the chosen answers' NLL (TRL's "sft" loss; RPO)
            **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight else {}),
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

