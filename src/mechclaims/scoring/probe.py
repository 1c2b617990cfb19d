"""``ProbeScorer``: the mean projection of the final-norm residual stream onto the probe
direction, read by a LoadedModel; values in scorer-specific units, *not* probabilities, so claims
compare them only as relative reductions (base vs DPO). ``CalibratedProbeScorer``: the same read
through the logistic-regression probe's intercept, a probability in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ScorerError
from .common import _check_texts, _rows


PROBE_READ_AT = "ln_final.hook_normalized"


class ProbeScorer:
    """Mean projection onto ``w/||w||`` of the final residual stream after the final norm
    (``ln_final.hook_normalized``; on the plain HF module, the base model's
    ``last_hidden_state``), over the scored tokens' positions, read by ``model``.

    ``score_continuations(prompt_tokens, continuation_tokens)``: each continuation is read by
    ``model`` (use the *base* model, so both a base's and a DPO model's continuations are
    judged by one reader) with its prompt as context; the mean is over the continuation
    positions only. ``score(texts)`` (the ``Scorer`` interface) reads each text after BOS (when
    the model uses one) and averages over the text's own tokens.

    The values are projections in the probe's units, not probabilities, and can be negative:
    compare them only as relative reductions between models, never against a fixed level.
    """

    name = "probe"

    def __init__(self, model, probe, *, batch_size: int = 32):
        from ..probe import Probe, load_probe

        if not isinstance(probe, Probe):
            probe = load_probe(probe, d_model=model.d_model)
        if probe.d_model != model.d_model:
            raise ScorerError(
                f"the probe has width {probe.d_model} but the model's d_model is {model.d_model}; "
                "use a probe read from this model's residual stream."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ScorerError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.model, self.probe, self.batch_size = model, probe, batch_size

    def describe(self) -> dict:
        return {"name": self.name, "kind": "probe projection",
                "units": "projection onto w/||w|| of the final-norm residual stream (not a probability)",
                "read_at": PROBE_READ_AT, "pooling": "mean over the scored tokens' positions",
                "model": self.model.source, "model_sha256": self.model.sha256,
                "probe_sha256": self.probe.sha256}

    def score(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        tok = self.model.tokenizer
        bos = tok.bos_token_id if getattr(self.model.bridge.cfg, "default_prepend_bos", False) else None
        prompts, conts = [], []
        for i, t in enumerate(texts):
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ScorerError(f"text {i} ({t[:40]!r}) encodes to no tokens; a probe score needs at least one.")
            if bos is not None:
                prompts.append([bos])
                conts.append(ids)
            else:  # no BOS: the first token is its own context
                prompts.append(ids[:1])
                conts.append(ids)
        return self._project(prompts, conts, prompt_in_conts=bos is None)

    def score_continuations(self, prompt_tokens, continuation_tokens) -> np.ndarray:
        """One value per row: the mean projection over the continuation's positions.

        ``prompt_tokens``: per row, the prompt ids the continuation followed (BOS included, as
        ``prompts.encode_prompts`` makes them); a list of id lists, a left-padded
        ``TokenBatch``, or a list of TokenBatches (their rows in order). ``continuation_tokens``:
        ``[n, T]`` ids (tensor or array) or a list of id lists (ragged allowed).
        """
        prompts = _prompt_rows(prompt_tokens)
        conts = _rows(continuation_tokens)
        if len(prompts) != len(conts):
            raise ScorerError(f"got {len(prompts)} prompts but {len(conts)} continuations; they must pair up.")
        for i, c in enumerate(conts):
            if not c:
                raise ScorerError(f"continuation {i} is empty; a probe score needs at least one token.")
        return self._project(prompts, conts)

    def _project(self, prompts: list[list[int]], conts: list[list[int]], prompt_in_conts: bool = False):
        import torch

        from ..perplexity import model_context
        from ..prompts import pad_left

        m = self.model
        hf = m.hf_model
        device = next(hf.parameters()).device
        w_hat = self.probe.unit().to(device=device, dtype=torch.float64)
        ctx = model_context(m)
        seqs, n_read = [], []
        for i, (p, c) in enumerate(zip(prompts, conts)):
            s = c if prompt_in_conts else p + c
            if len(s) > ctx:
                raise ScorerError(
                    f"row {i}: prompt + continuation is {len(s)} tokens, more than the model's "
                    f"context ({ctx}); shorten the prompt (encode_prompts(max_prompt_tokens=...))."
                )
            seqs.append(s)
            n_read.append(len(c))
        out = np.empty(len(seqs), dtype=np.float64)
        pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else 0
        with torch.no_grad():
            for j in range(0, len(seqs), self.batch_size):
                batch = pad_left(seqs[j:j + self.batch_size], pad, device=device)
                h = hf.base_model(input_ids=batch.tokens, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, use_cache=False).last_hidden_state
                proj = h.to(torch.float64) @ w_hat  # [b, width]
                width = proj.shape[1]
                for r, n in enumerate(n_read[j:j + self.batch_size]):
                    out[j + r] = float(proj[r, width - n:].mean())
        if not np.isfinite(out).all():
            from ..errors import NumericalError

            raise NumericalError("the probe projection came out non-finite; the model produced NaN/inf "
                                 "activations (try dtype float32).")
        return out

    def __repr__(self) -> str:
        return f"ProbeScorer({self.model.source!r}, probe {self.probe.sha256[:12]})"


def _prompt_rows(prompt_tokens) -> list[list[int]]:
    batches = prompt_tokens if isinstance(prompt_tokens, (list, tuple)) and prompt_tokens \
        and hasattr(prompt_tokens[0], "attention_mask") else None
    if hasattr(prompt_tokens, "attention_mask"):
        batches = [prompt_tokens]
    if batches is None:
        return _rows(prompt_tokens)
    rows = []
    for b in batches:
        toks, mask = b.tokens.detach().cpu(), b.attention_mask.detach().cpu().bool()
        rows.extend(toks[i][mask[i]].tolist() for i in range(toks.shape[0]))
    return rows


class CalibratedProbeScorer(ProbeScorer):
    """The probe as a toxicity *probability*: ``sigmoid(||w|| * projection + intercept)``, the
    logistic-regression probe's own output on the mean-pooled residual stream of the scored
    tokens. Needs a probe that carries its ``intercept`` (``probe.train_probe`` stores it);
    without one the projections are not probabilities, and a behavioural claim would compare
    signed numbers as if they were rates (shares far outside [0, 1]), so it is refused."""

    name = "probe"

    def __init__(self, model, probe, *, batch_size: int = 32):
        super().__init__(model, probe, batch_size=batch_size)
        intercept = self.probe.metadata.get("intercept")
        if not isinstance(intercept, (int, float)) or not np.isfinite(intercept):
            raise ScorerError(
                "the probe scorer needs a probe that carries its logistic-regression intercept "
                "(metadata 'intercept'), so that its scores are probabilities in [0, 1]; this probe "
                f"(sha256 {self.probe.sha256[:12]}) has none. Train one with mechclaims.probe.train_probe, "
                "or pass --scorer detoxify[:variant] or --scorer lexicon:PATH.")
        self.intercept = float(intercept)
        self.scale = float(self.probe.direction.double().norm())

    def _project(self, prompts, conts, prompt_in_conts: bool = False):
        z = self.scale * super()._project(prompts, conts, prompt_in_conts) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def describe(self) -> dict:
        return {**super().describe(), "kind": "calibrated probe",
                "units": "probability: sigmoid(||w|| * projection + intercept)", "intercept": self.intercept}
