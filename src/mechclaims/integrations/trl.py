"""``MechclaimsCallback``: the claims on the policy while TRL trains it.

In the form of TRL's own ``LogCompletionsCallback``::

    trainer = DPOTrainer(model=..., args=DPOConfig(save_steps=500, ...), peft_config=lora, ...)
    trainer.add_callback(MechclaimsCallback(
        trainer, base="gpt2-medium", probe="probe.safetensors", prompts="challenge.jsonl",
        select="gate", num_prompts=64, stop_on_fail=True))

At every save (``on_save``: the ``checkpoint-N`` folder the trainer just wrote, LoRA adapter or
full model) and, with ``on="evaluate"``, at every evaluation (a copy of the current policy saved
to a scratch folder), it runs the selected claims against the reference model (``base``:
default, the adapter's base or the policy's ``_name_or_path``) on the first ``num_prompts``
prompts, exactly as ``pytest claims/`` would on that checkpoint, and logs each claim's value
as ``mechclaims/<ID>`` (``mechclaims/<ID>.<check>`` for claims with several checks) through the
trainer's own logging (``Trainer.log``: the console, TensorBoard, W&B, ...). With
``stop_on_fail`` a failing ``gate`` claim stops training. Only the main process computes.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from ..errors import ConfigError

EVENTS = ("save", "evaluate")


class MechclaimsCallback(TrainerCallback):
    """Run mechclaims claims on the policy at each save or evaluation; log and optionally stop.

    Args:
        trainer: the (DPO) trainer; used for its logging and output directory.
        base: the reference model's source (default: the adapter's ``base_model_name_or_path``).
        probe, prompts: as ``--probe`` / ``--prompts``.
        claims: claim IDs to run; or ``select="gate"`` for the gating set, ``"all"`` for all.
        num_prompts: the first N prompts only (a subset keeps training fast).
        on: ``"save"`` (default) or ``"evaluate"``.
        stop_on_fail: stop training when a ``gate`` claim fails.
        claims_dir: where the ``@claim`` tests live (default: mechclaims's ``claims/``).
        **settings: any other claim-run setting (``max_new_tokens``, ``positions``, ``bootstrap``,
            ``thresholds``, ``cache_dir``, ``device``, ``dtype`` ...).
    """

    def __init__(self, trainer, *, probe: str, prompts: str, base: str | None = None, claims=None,
                 select: str = "gate", num_prompts: int | None = 64, on: str = "save", stop_on_fail: bool = False,
                 claims_dir: str | None = None, **settings):
        from ..config import build_config
        from ..sweep import load_claims

        if on not in EVENTS:
            raise ConfigError(f"on must be one of {EVENTS}, got {on!r}.")
        if select not in ("gate", "all"):
            raise ConfigError(f"select must be 'gate' or 'all', got {select!r}.")
        self.trainer, self.on, self.stop_on_fail = trainer, on, bool(stop_on_fail)
        specs = load_claims(claims_dir or Path(__file__).resolve().parents[3] / "claims")
        if claims is not None:
            unknown = sorted(set(claims) - set(specs))
            if unknown:
                raise ConfigError(f"unknown claims {unknown}; known: {sorted(specs)}.")
            specs = {k: specs[k] for k in claims}
        elif select == "gate":
            specs = {k: s for k, s in specs.items() if "gate" in s.tags}
        self.specs = specs
        self._scratch = tempfile.TemporaryDirectory(prefix="mechclaims-trl-")
        self.prompts = self._subset(prompts, num_prompts)
        thresholds = settings.pop("thresholds", None)
        cli = {"model": "", "base": base or "", "probe": str(probe), "prompts": self.prompts,
               "report": str(Path(self._scratch.name) / "claims.html"), **settings}
        if thresholds:
            cli["thresholds"] = thresholds
        self.config = build_config(cli)
        self.history: list[dict] = []  # one entry per run: step, values, failed gate claims

    def _subset(self, prompts: str, n: int | None) -> str:
        from ..prompts import read_prompts

        rows = read_prompts(prompts)
        rows = rows[:n] if n else rows
        import json

        path = Path(self._scratch.name) / "prompts.jsonl"
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows), encoding="utf-8")
        return str(path)

    # --- events ---------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        if self.on == "save" and state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self._run(ckpt, state, control)
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.on == "evaluate" and state.is_world_process_zero:
            ckpt = Path(self._scratch.name) / f"policy-{state.global_step}"
            self.trainer.model.save_pretrained(ckpt)
            self._run(ckpt, state, control)
        return control

    # --- the run ----------------------------------------------------------------------------------
    def _run(self, checkpoint: Path, state, control) -> None:
        import torch

        from ..runspec import resolve_run
        from ..suite import ClaimSuite

        grad = torch.is_grad_enabled()
        try:
            run = resolve_run(replace(self.config, model=str(checkpoint)))
            suite = ClaimSuite(run, self.specs)
            suite.compute(progress=False)
        finally:
            torch.set_grad_enabled(grad)  # loading turns gradients off for the statistics pass
        logs, failed = {}, []
        for cid in self.specs:
            r = suite.result(cid)
            for c in r.checks:
                key = f"mechclaims/{cid}" if len(r.checks) == 1 else f"mechclaims/{cid}.{c.check.name}"
                if math.isfinite(c.value):
                    logs[key] = c.value
            if r.status == "fail" and "gate" in r.spec.tags:
                failed.append(cid)
        self.history.append({"step": state.global_step, "checkpoint": str(checkpoint), "values": dict(logs),
                             "failed_gate": failed, "statuses": {cid: suite.results[cid].status for cid in self.specs}})
        if logs:
            self.trainer.log(dict(logs))
        if failed and self.stop_on_fail:
            control.should_training_stop = True
