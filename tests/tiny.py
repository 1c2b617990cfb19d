"""Tiny random checkpoints and a real byte-level BPE tokenizer, made locally for tests."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("gpt2", "llama", "mistral", "gemma", "gemma2")

PROMPTS = (
    "you are a kind person",
    "the weather is nice today and we walk",
    "shut up you idiot",
    "hello my friend, how are you",
    "why would you say that to me",
    "the cat sat on the mat",
    "I will tell you a story about a dragon",
    "go away",
    "thanks",
    "what a lovely day it is in the park with the dogs and the children",
    "please pass the salt",
    "nobody asked for your opinion",
)

_CORPUS = [
    "you are a kind person and a good friend", "the weather is nice today",
    "shut up you stupid idiot", "hello my friend how are you doing",
    "the cat sat on the mat near the door", "I will tell you a story about a dragon",
    "go away nobody likes you", "thanks for the lovely gift",
    "please pass the salt and the bread", "what a lovely day in the park",
]


def make_tokenizer(out: Path, vocab_size: int = 320) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return Path(out)


def config_for(arch: str, vocab: int, **over):
    from transformers import (GemmaConfig, Gemma2Config, GPT2Config, LlamaConfig, MistralConfig)

    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if arch == "gpt2":
        kw = dict(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4, n_inner=96, **ids)
        kw.update(over)
        return GPT2Config(**kw)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **ids)
    if arch in ("gemma", "gemma2"):
        common["head_dim"] = 8
    common.update(over)
    return {"llama": LlamaConfig, "mistral": MistralConfig, "gemma": GemmaConfig,
            "gemma2": Gemma2Config}[arch](**common)


def make_model(arch: str, vocab: int, seed: int, **over):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(arch, vocab, **over))
    with torch.no_grad():  # HF init is tiny for some archs; widen so activations are varied
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.15)
    return model.eval()


def perturb(model, seed: int, scale: float = 0.05):
    """Seeded small relative perturbation of every weight matrix (a stand-in fine-tune)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return model


def make_pair(out: Path, arch: str, tokenizer_dir: Path, seed: int = 0, **over) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = make_model(arch, len(tok), seed, **over)
    base_dir, cand_dir = Path(out) / "base", Path(out) / "candidate"
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    perturb(base, seed + 1000).save_pretrained(cand_dir)
    tok.save_pretrained(cand_dir)
    return base_dir, cand_dir


def probe_and_prompts(d: Path, pair: tuple[Path, Path], seed: int = 5) -> dict:
    """A random probe of the pair's width and the tiny prompts, written into ``d``: the inputs of
    a claim run on a tiny pair (``base``, ``model``, ``probe``, ``prompts``, ``dir``, ``d_model``)."""
    import torch
    from transformers import AutoConfig

    from mechclaims.probe import Probe

    base, cand = pair
    d_model = AutoConfig.from_pretrained(base).n_embd
    Probe(torch.randn(d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))).save(
        d / "probe.safetensors")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"base": str(base), "model": str(cand), "probe": str(d / "probe.safetensors"),
            "prompts": str(d / "prompts.txt"), "dir": d, "d_model": d_model}
