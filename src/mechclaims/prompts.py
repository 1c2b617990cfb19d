"""Prompt files -> left-padded token batches.

Formats:

- ``.jsonl``: one JSON object per line with a ``prompt`` field, either a string or
  RealToxicityPrompts' ``{"prompt": {"text": ...}}``;
- ``.txt``: one prompt per line;
- ``.csv``: a ``prompt`` or ``text`` column under a header row.

Every format is UTF-8; a leading byte-order mark is dropped.

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


_UTF8_BOM = b"\xef\xbb\xbf"


def read_prompts(path: str | Path) -> list[str]:
    """Read prompts from ``.jsonl``, ``.txt`` or ``.csv``. Errors name the file and line.

    A ``.csv`` file (read with the csv module, so quoted fields may hold commas and newlines)
    needs a header row with a ``prompt`` or ``text`` column (case-insensitive; ``prompt`` wins
    when both are present); every other column is ignored.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise PromptError(
            f"prompt path {str(path)!r} is a directory ({p.resolve()}); expected a .jsonl, .txt "
            "or .csv prompt file. Pass the file itself, not the folder holding it."
        )
    if not p.is_file():
        raise PromptError(
            f"prompt file {str(path)!r} does not exist (looked at {p.resolve()}); expected a "
            ".jsonl file with a 'prompt' field per line, a .txt file with one prompt per line, "
            "or a .csv file with a 'prompt' or 'text' column."
        )
    raw = p.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PromptError(f"{p}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); expected UTF-8. "
                          "Re-save it as UTF-8 (PowerShell: Out-File -Encoding utf8).")
    if p.suffix.lower() == ".csv":
        return _read_csv_prompts(p, raw)
    # A UTF-8 byte-order mark (Notepad, Excel, PowerShell write one) is not part of prompt 1.
    raw = raw.removeprefix(_UTF8_BOM)
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


_CSV_PROMPT_COLUMNS = ("prompt", "text")


def _read_csv_prompts(p: Path, raw: bytes) -> list[str]:
    """Prompts from the ``prompt``/``text`` column of a CSV file with a header row."""
    import csv
    import io

    try:
        text = raw.decode("utf-8-sig")  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        n = raw[:exc.start].count(b"\n") + 1
        raise PromptError(
            f"{p}:{n}: line is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-encode the file as UTF-8."
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    prompts: list[str] = []
    try:
        header = next(reader, None)
        if header is None:
            raise PromptError(f"prompt file {p} holds no prompts; expected a header row with a "
                              "'prompt' or 'text' column and at least one row.")
        names = [h.strip().lower() for h in header]
        col = next((names.index(c) for c in _CSV_PROMPT_COLUMNS if c in names), None)
        if col is None:
            raise PromptError(
                f"{p}:1: got header columns {header}; expected a header row with a 'prompt' or "
                "'text' column (case-insensitive). Add a header line naming the prompt column."
            )
        for row in reader:
            n = reader.line_num
            if not row:
                raise PromptError(f"{p}:{n}: empty line in a .csv prompt file; remove it.")
            if len(row) <= col:
                raise PromptError(
                    f"{p}:{n}: got {len(row)} fields; expected at least {col + 1}, up to the "
                    f"{header[col]!r} column. Quote fields that hold commas."
                )
            if not row[col].strip():
                raise PromptError(f"{p}:{n}: the prompt is empty; every row must hold a prompt.")
            prompts.append(row[col])
    except csv.Error as exc:
        raise PromptError(f"{p}:{reader.line_num}: malformed CSV ({exc}); expected RFC 4180 "
                          "rows (quote fields that hold commas, quotes or newlines).") from exc
    if not prompts:
        raise PromptError(f"prompt file {p} holds no prompts; expected at least one row after "
                          "the header.")
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
