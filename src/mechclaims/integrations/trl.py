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
prompts, exactly as ``pytest claims/`` would on that checkpoint (``select="gate"``: with the
gate's interval reading, as ``pytest claims/ -m gate``), and

* logs each claim's value as ``mechclaims/<ID>`` (``mechclaims/<ID>.<check>`` for claims with
  several checks) and its verdict as ``mechclaims/<ID>/verdict`` (``VERDICT_NUMBER``: 1 pass,
  0.5 inconclusive, 0 fail / not meaningful / not checked; a skipped claim logs nothing) through
  the trainer's own logging (``Trainer.log``: the console, TensorBoard, W&B, ...), which takes
  numbers only;
* keeps the checkpoint's claim report next to it: ``checkpoint-N/mechclaims/claims.html`` and
  ``claims.json`` (with ``on="evaluate"``: ``<output_dir>/mechclaims/step-N/``); the
  ``mechclaims/`` folder is not part of the checkpoint's sha256 (``cache.REPORT_DIR``);
* when a ``gate`` claim fails (outcome ``failed``, as in pytest), says so on the ``mechclaims``
  logger (a warning: the step, each failing claim's message, the report), and with
  ``stop_on_fail`` stops training (``stop_reason`` keeps the text).

Only the main process computes.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from ..errors import ConfigError

EVENTS = ("save", "evaluate")
#: ``mechclaims/<ID>/verdict`` as logged: Trainer.log and its loggers (TensorBoard drops
#: anything else) take numbers, so a status is a number; a skipped claim is not logged.
VERDICT_NUMBER = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0, "not_meaningful": 0.0, "not_checked": 0.0}
#: The folder beside a checkpoint's files that holds its claim report.
REPORT_DIR = "mechclaims"

logger = logging.getLogger("mechclaims.integrations.trl")


class MechclaimsCallback(TrainerCallback):
    """Run mechclaims claims on the policy at each save or evaluation; log and optionally stop.

    Args:
        trainer: the (DPO) trainer; used for its logging and output directory.
        base: the reference model's source (default: the adapter's ``base_model_name_or_path``).
        probe: as ``--probe``.
        prompts: as ``--prompts``.
        claims: claim IDs to run; or ``select="gate"`` for the gating set, ``"all"`` for all.
        num_prompts: the first N prompts only (a subset keeps training fast).
        on: ``"save"`` (default) or ``"evaluate"``.
        stop_on_fail: stop training when a ``gate`` claim fails (the reason is logged as a warning).
        keep_reports: write each checkpoint's ``claims.html`` / ``claims.json`` into
            ``checkpoint-N/mechclaims/`` (default True).
        claims_dir: where the ``@claim`` tests live (default: the built-in claims, ``mechclaims.claims_dir()``).
        **settings: any other claim-run setting (``max_new_tokens``, ``positions``, ``bootstrap``,
            ``thresholds``, ``cache_dir``, ``device``, ``dtype``, ``reading`` ...). ``reading``
            defaults to ``"interval"`` (the gate's) with ``select="gate"``, else the paper's point
            reading.
    """

    def __init__(self, trainer, *, probe: str, prompts: str, base: str | None = None, claims=None,
                 select: str = "gate", num_prompts: int | None = 64, on: str = "save", stop_on_fail: bool = False,
                 claims_dir: str | None = None, keep_reports: bool = True, **settings):
        from ..config import build_config
        from ..sweep import load_claims

        if on not in EVENTS:
            raise ConfigError(f"on must be one of {EVENTS}, got {on!r}.")
        if select not in ("gate", "all"):
            raise ConfigError(f"select must be 'gate' or 'all', got {select!r}.")
        self.trainer, self.on, self.stop_on_fail = trainer, on, bool(stop_on_fail)
        self.keep_reports = bool(keep_reports)
        self.stop_reason: str | None = None
        specs = load_claims(claims_dir)  # None: the built-in claims, mechclaims.claims_dir()
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
        if settings.get("reading") is None:  # the gate's reading for the gate, as pytest -m gate
            settings["reading"] = "interval" if select == "gate" else "auto"
        cli = {"model": "", "base": base or "", "probe": str(probe), "prompts": self.prompts,
               "report": str(Path(self._scratch.name) / "claims.html"), **settings}
        if thresholds:
            cli["thresholds"] = thresholds
        self.config = build_config(cli)
        self.history: list[dict] = []  # one entry per run: step, values, verdicts, failed gate claims, report

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
            self._run(ckpt, ckpt / REPORT_DIR, state, control)
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.on == "evaluate" and state.is_world_process_zero:
            ckpt = Path(self._scratch.name) / f"policy-{state.global_step}"
            self.trainer.model.save_pretrained(ckpt)
            self._run(ckpt, Path(args.output_dir) / REPORT_DIR / f"step-{state.global_step}", state, control)
        return control

    # --- the run ----------------------------------------------------------------------------------
    def _run(self, checkpoint: Path, report_dir: Path, state, control) -> None:
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
            if r.status in VERDICT_NUMBER:
                logs[f"mechclaims/{cid}/verdict"] = VERDICT_NUMBER[r.status]
            if r.outcome == "failed" and "gate" in r.spec.tags:
                failed.append(r)
        report = self._write_report(suite.suite_result(), report_dir) if self.keep_reports else None
        self.history.append({"step": state.global_step, "checkpoint": str(checkpoint), "values": dict(logs),
                             "failed_gate": [r.spec.id for r in failed],
                             "statuses": {cid: suite.results[cid].status for cid in self.specs},
                             "report": str(report) if report else None})
        if logs:
            self.trainer.log(dict(logs))
        if failed:
            self._say_failed(failed, checkpoint, state.global_step, report)
            if self.stop_on_fail:
                control.should_training_stop = True

    @staticmethod
    def _write_report(result, report_dir: Path) -> Path:
        """claims.html + claims.json of this checkpoint into ``report_dir`` (beside its files)."""
        from ..report import write_reports

        html = Path(report_dir) / "claims.html"
        config = replace(result.run.config, report=str(html))
        write_reports(replace(result, run=replace(result.run, config=config)))
        return html

    def _say_failed(self, failed, checkpoint: Path, step: int, report: Path | None) -> None:
        """The warning a failing gate gives: which claims, their messages, the step, the report."""
        from ..provenance import display_path

        what = "; ".join(r.message() + (f" ({r.status.replace('_', ' ')}: {r.reason})" if r.reason else "")
                         for r in failed)
        where = f" Report: {display_path(report)}." if report else ""
        if self.stop_on_fail:
            self.stop_reason = (f"mechclaims: stopping training at step {step}: gate claim(s) "
                                f"{', '.join(r.spec.id for r in failed)} failed on {display_path(checkpoint)}: "
                                f"{what}.{where}")
            logger.warning(self.stop_reason)
        else:
            logger.warning(f"mechclaims: at step {step} gate claim(s) {', '.join(r.spec.id for r in failed)} failed "
                           f"on {display_path(checkpoint)} (training continues: stop_on_fail=False): {what}.{where}")
