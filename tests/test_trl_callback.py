"""MechclaimsCallback in a real (short) TRL DPO run on the organism, with and without LoRA: the
values it logs equal an offline run on the checkpoint it saw; stop_on_fail stops training."""

from pathlib import Path

import pytest

from mechclaims.organism import layout

ORG = layout("gpt2")
CLAIMS = ("C0", "C3", "C6")


def _train(out: Path, *, lora: bool, callback_kwargs: dict, max_steps: int = 4):
    from mechclaims.integrations.trl import MechclaimsCallback
    from tests.trl_runs import short_dpo_trainer, train

    trainer, _ = short_dpo_trainer(out, lora=lora, max_steps=max_steps)
    cb = MechclaimsCallback(trainer, base=str(ORG.base), probe=str(ORG.probe), prompts=str(ORG.prompts),
                            num_prompts=8, max_new_tokens=4, bootstrap=20, cache_dir=str(out / "mc-cache"),
                            **callback_kwargs)
    trainer.add_callback(cb)
    return train(trainer), cb


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_logged_values_equal_an_offline_run(tmp_path, lora):
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run
    from mechclaims.suite import ClaimSuite

    trainer, cb = _train(tmp_path / "run", lora=lora, callback_kwargs={"claims": CLAIMS})
    assert [h["step"] for h in cb.history] == [2, 4]
    logged = [h for h in trainer.state.log_history if any(k.startswith("mechclaims/") for k in h)]
    assert [h["step"] for h in logged] == [2, 4]
    assert {"mechclaims/C0", "mechclaims/C3", "mechclaims/C6.max_share"} <= set(logged[-1])
    # numbers, as the trainer's loggers take; a skipped claim logs none
    verdicts = {"pass": 1.0, "inconclusive": 0.5, "fail": 0.0, "not_meaningful": 0.0, "not_checked": 0.0}
    for cid, status in cb.history[-1]["statuses"].items():
        assert logged[-1].get(f"mechclaims/{cid}/verdict") == verdicts.get(status), (cid, status)
    # Offline, on the saved checkpoint, as a user would rerun it
    ckpt = tmp_path / "run" / "checkpoint-4"
    assert (ckpt / ("adapter_config.json" if lora else "model.safetensors")).is_file()
    cfg = build_config({"model": str(ckpt), "base": str(ORG.base), "probe": str(ORG.probe),
                        "prompts": cb.prompts, "max_new_tokens": 4, "bootstrap": 20,
                        "cache_dir": str(tmp_path / "offline-cache"), "report": str(tmp_path / "r" / "claims.html")})
    suite = ClaimSuite(resolve_run(cfg), cb.specs)
    suite.compute(progress=False)
    for cid in CLAIMS:
        for c in suite.result(cid).checks:
            key = f"mechclaims/{cid}" if len(suite.results[cid].checks) == 1 else f"mechclaims/{cid}.{c.check.name}"
            assert logged[-1][key] == pytest.approx(c.value, rel=1e-12), key


@pytest.mark.slow
def test_stop_on_fail_stops_training(tmp_path, caplog):
    """A gate claim that fails (a threshold no model meets) stops training at the first save,
    says which claim and step and why, logs the verdict as a number, and leaves the report in
    the checkpoint without changing the checkpoint's sha256."""
    import json

    from mechclaims.sources import resolve_source

    with caplog.at_level("WARNING", logger="mechclaims"):
        trainer, cb = _train(tmp_path / "run", lora=True, max_steps=6,
                             callback_kwargs={"claims": ("C0",), "stop_on_fail": True,
                                              "thresholds": {"C0": {"net": 1e9}}})
    assert cb.history[0]["failed_gate"] == ["C0"]
    assert trainer.state.global_step == 2  # stopped at the first save, not at max_steps 6
    assert cb.config.reading == "interval"  # select="gate" (the default): the gate's reading
    said = [r.getMessage() for r in caplog.records if r.name.startswith("mechclaims")]
    assert len(said) == 1 and said[0] == cb.stop_reason, said
    assert "stopping training at step 2" in said[0] and "C0 net-reduction" in said[0] and "1e+09" in said[0]
    logged = [h for h in trainer.state.log_history if "mechclaims/C0/verdict" in h]
    assert [(h["step"], h["mechclaims/C0/verdict"]) for h in logged] == [(2, 0.0)]
    assert isinstance(logged[0]["mechclaims/C0"], float)
    ckpt = tmp_path / "run" / "checkpoint-2"
    doc = json.loads((ckpt / "mechclaims" / "claims.json").read_text())
    assert [(c["id"], c["status"], c["outcome"]) for c in doc["claims"]] == [("C0", "fail", "failed")]
    assert doc["reading"] == "interval" and (ckpt / "mechclaims" / "claims.html").is_file()
    assert cb.history[0]["report"] == str(ckpt / "mechclaims" / "claims.html")
    # the report beside the weights is not part of the checkpoint's content hash
    assert resolve_source(str(ckpt), base=resolve_source(str(ORG.base))).sha256 == doc["provenance"]["model"]["sha256"]


def test_bad_callback_arguments(tmp_path):
    from mechclaims.errors import ConfigError
    from mechclaims.integrations.trl import MechclaimsCallback

    with pytest.raises(ConfigError, match="unknown claims"):
        MechclaimsCallback(None, probe=str(ORG.probe), prompts=str(ORG.prompts), claims=("C99",))
    with pytest.raises(ConfigError, match="on must be one of"):
        MechclaimsCallback(None, probe=str(ORG.probe), prompts=str(ORG.prompts), on="epoch")
