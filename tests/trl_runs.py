"""A short, real DPO run on the GPT-2 organism's base (TRL, optionally with a PEFT LoRA adapter),
shared by the tests of fine-tuning sources, sweeps and the TRL callback."""

from pathlib import Path

from mechclaims.organism import layout

ORG = layout("gpt2")


def short_dpo_trainer(out: Path, *, lora: bool, max_steps: int, save_steps: int = 2,
                      learning_rate: float | None = None):
    """A DPOTrainer (not yet trained) on 16 of the organism's preference pairs, saving every
    ``save_steps`` steps into ``out``."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from mechclaims.builder.config import SPECIAL, BuildConfig
    from mechclaims.builder.data import make_pairs

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(ORG.base)
    policy = AutoModelForCausalLM.from_pretrained(ORG.base)
    pairs = make_pairs(BuildConfig.default("gpt2"), 16)
    ds = datasets.Dataset.from_list([{"prompt": SPECIAL["bos_token"] + p["prompt"], "chosen": p["chosen"],
                                      "rejected": p["rejected"]} for p in pairs])
    lr = learning_rate if learning_rate is not None else (5e-3 if lora else 1e-4)
    args = DPOConfig(output_dir=str(out), beta=0.1, learning_rate=lr, per_device_train_batch_size=8,
                     max_steps=max_steps, save_strategy="steps", save_steps=save_steps, logging_steps=2,
                     report_to="none", use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                     max_length=64, bf16=False)  # TRL's default bf16 autocast is ~30x slower on a CPU
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True,
                      lora_dropout=0.0, task_type="CAUSAL_LM") if lora else None
    ref = None if lora else AutoModelForCausalLM.from_pretrained(ORG.base)
    return DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                      peft_config=peft), tok


def train(trainer):
    import torch

    with torch.enable_grad():  # mechclaims.loading turns gradients off globally
        trainer.train()
    return trainer
