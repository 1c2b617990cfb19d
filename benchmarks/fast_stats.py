"""Prototype (benchmark-only, not used by mechclaims): the same statistics as
``mechclaims.stats.collect_pair(positions="own")``, computed on the plain HF module.

Differences from the shipped pass, each one a suggestion measured in README.md:

1. Batches span chunks: prompts are batched ``batch_size`` at a time regardless of the chunk
   boundaries, and each row's sums are scattered into its chunk with ``index_add_``. The shipped
   pass runs every chunk on its own, so with 64 prompts and 32 chunks it generates in batches
   of 2 whatever ``batch_size`` says.
2. Plain HF modules with PyTorch forward hooks (``mlp.act`` output = hook_post, ``mlp`` output =
   mlp.out.hook_out incl. b_out, block output = hook_resid_post) instead of TransformerBridge's
   wrapper components and HookPoints.
3. Only the last position's logits are computed (``logits_to_keep=1``); the bridge's
   ``return_type="logits_and_cache"`` unembeds every prompt position in the prefill.

The greedy loop is written out (no ``generate``), so the semantics equal ``greedy_generate``:
exactly T tokens, EOS not suppressed, positions counting real tokens only.
"""

from __future__ import annotations

import numpy as np
import torch

from mechclaims.prompts import encode_prompts, pad_left
from mechclaims.stats import ModelStats, chunk_ranges


class _RowAcc:
    """float64 per-chunk sums; ``rows`` maps the current batch's rows to chunk indices."""

    def __init__(self, hf, n_chunks: int, w_hat, post_only: bool = False):
        blocks = hf.transformer.h
        d_mlp = blocks[0].mlp.c_fc.nf
        L = len(blocks)
        self.act = torch.zeros(n_chunks, L, d_mlp, dtype=torch.float64)
        self.mlp_proj = torch.zeros(n_chunks, L, dtype=torch.float64)
        self.resid_proj = torch.zeros(n_chunks, L, dtype=torch.float64)
        self.w_hat = w_hat.to(torch.float64)
        self.rows = None
        self.handles = []
        for layer, blk in enumerate(blocks):
            self.handles.append(blk.mlp.act.register_forward_hook(self._post(layer)))
            if not post_only:
                self.handles.append(blk.mlp.register_forward_hook(self._proj(self.mlp_proj, layer)))
                self.handles.append(blk.register_forward_hook(self._proj(self.resid_proj, layer)))

    def _post(self, layer):
        def hook(mod, inp, out):
            self.act[:, layer].index_add_(0, self.rows, out[:, -1].to(torch.float64))
        return hook

    def _proj(self, target, layer):
        def hook(mod, inp, out):
            x = out[0] if isinstance(out, tuple) else out
            target[:, layer].index_add_(0, self.rows, x[:, -1].to(torch.float64) @ self.w_hat)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def greedy_hf(hf, batch, T: int) -> torch.Tensor:
    """KV-cached greedy loop on the plain HF model; hooks see position -1 of each forward."""
    from transformers import DynamicCache

    mask, pos = batch.attention_mask, batch.position_ids
    cache = DynamicCache(config=hf.config)
    out = hf(batch.tokens, attention_mask=mask, position_ids=pos, past_key_values=cache,
             use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1)
    toks = [nxt]
    ones = torch.ones_like(mask[:, :1])
    for _ in range(T - 1):
        mask = torch.cat([mask, ones], dim=1)
        pos = pos[:, -1:] + 1
        out = hf(nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                 use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
        toks.append(nxt)
    return torch.stack(toks, dim=1)


def collect_pair_fast(hf_base, hf_model, tokenizer, prompts, probe, *, T=20, batch_size=32,
                      max_chunks=32, max_prompt_tokens=32, prepend_bos=True,
                      post_only=False) -> tuple[ModelStats, ModelStats]:
    ranges = chunk_ranges(len(prompts), max_chunks)
    chunk_of = torch.cat([torch.full((b - a,), k, dtype=torch.long) for k, (a, b) in enumerate(ranges)])
    counts = np.array([float((b - a) * T) for a, b in ranges])
    seqs = encode_prompts(tokenizer, prompts, max_prompt_tokens=max_prompt_tokens,
                          prepend_bos=prepend_bos)
    w_hat = probe.unit()
    result = []
    with torch.no_grad():
        for hf in (hf_base, hf_model):
            acc = _RowAcc(hf, len(ranges), w_hat, post_only=post_only)
            conts = []
            try:
                for i in range(0, len(seqs), batch_size):
                    acc.rows = chunk_of[i:i + batch_size]
                    batch = pad_left(seqs[i:i + batch_size], tokenizer.pad_token_id)
                    conts.append(greedy_hf(hf, batch, T))
            finally:
                acc.remove()
            result.append(ModelStats(act_sum=acc.act.numpy(), count=counts.copy(),
                                     mlp_out_proj_sum=acc.mlp_proj.numpy(),
                                     resid_post_proj_sum=acc.resid_proj.numpy(),
                                     continuations=torch.cat(conts).numpy().astype(np.int64)))
    return result[0], result[1]
