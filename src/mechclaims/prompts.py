"""Prompt files -> left-padded token batches.

Formats:

- ``.jsonl``: one JSON object per line with a ``prompt`` field, either a string or
  RealToxicityPrompts' ``{"prompt": {"text": ...}}``;
- ``.txt``: one prompt per line.

Tokenisation follows the paper's evaluation code: at most ``max_prompt_tokens`` (32) tokens,
keeping the *first* tokens (right truncation), then BOS prepended as the TransformerBridge
does (``cfg.default_prepend_bos``), then left padding so that the last column is every
prompt's last token and generation appends on the right.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptError


def read_prompts(path: str | Path) -> list[str]:
    """Read prompts from ``.jsonl`` or ``.txt``. Errors name the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PromptError(
            f"prompt file {str(path)!r} does not exist (looked at {p.resolve()}); expected a "
            ".jsonl file with a 'prompt' field per line, or a .txt file with one prompt per line."
        )
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    prompts: list[str] = []
    is_jsonl = p.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise PromptError(
                f"{p}:{n}: line is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                "re-encode the file as UTF-8."
            ) from exc
        if is_jsonl:
            if not text.strip():
                raise PromptError(f"{p}:{n}: empty line in a .jsonl prompt file; remove it.")
            text = _prompt_from_json(text, p, n)
        if not text.strip():
            raise PromptError(f"{p}:{n}: the prompt is empty; every line must hold a prompt.")
        prompts.append(text)
    if not prompts:
        raise PromptError(f"prompt file {p} holds no prompts; expected at least one.")
    return prompts


def _prompt_from_json(text: str, p: Path, n: int) -> str:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"{p}:{n}: not valid JSON ({exc.msg}); expected one object per line.") from exc
    prompt = obj.get("prompt") if isinstance(obj, dict) else None
    if isinstance(prompt, dict):
        prompt = prompt.get("text")
    if not isinstance(prompt, str):
        raise PromptError(
            f"{p}:{n}: expected a 'prompt' field holding a string or {{'text': ...}}, "
            f"found {type(prompt).__name__}."
        )
    return prompt


def prompts_sha256(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()


def encode_prompts(tokenizer, prompts: list[str], *, max_prompt_tokens: int = 32,
                   prepend_bos: bool = True) -> list[list[int]]:
    """Token ids per prompt: the first ``max_prompt_tokens`` tokens, BOS prepended if asked."""
    if max_prompt_tokens < 1:
        raise PromptError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}.")
    bos = tokenizer.bos_token_id if prepend_bos else None
    out = []
    for i, text in enumerate(prompts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_prompt_tokens]
        if bos is not None:
            ids = [bos] + ids
        if not ids:
            raise PromptError(f"prompt {i} ({text[:40]!r}) encodes to no tokens.")
        out.append(ids)
    return out


@dataclass
class TokenBatch:
    """Left-padded prompts: ``tokens`` and ``attention_mask`` are ``[batch, pos]`` long tensors."""

    tokens: "object"
    attention_mask: "object"

    @property
    def position_ids(self):
        # Positions count real tokens only, as HF generate does, so padding never shifts them.
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def pad_left(seqs: list[list[int]], pad_id: int, device="cpu") -> TokenBatch:
    import torch

    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return TokenBatch(tokens.to(device), mask.to(device))
