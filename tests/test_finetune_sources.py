"""What a fine-tuning run produces is a model source: a real LoRA DPO run through TRL and PEFT
on the organism, its ``checkpoint-N/`` folders, the merged model saved in full and sharded."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mechclaims.errors import ModelSourceError
from mechclaims.organism import layout

ORG = layout("gpt2")
N_PROMPTS = 8


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Three checkpoints of a short LoRA DPO run on the GPT-2 organism's base (TRL + PEFT)."""
    from tests.trl_runs import short_dpo_trainer, train

    out = tmp_path_factory.mktemp("lora-dpo")
    trainer, tok = short_dpo_trainer(out / "run", lora=True, max_steps=6)
    train(trainer)
    run = out / "run"
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # The same weights as a full checkpoint, and sharded.
    merged = trainer.model.merge_and_unload().eval()
    merged.save_pretrained(out / "merged")
    tok.save_pretrained(out / "merged")
    merged.save_pretrained(out / "sharded", max_shard_size="1MB")
    tok.save_pretrained(out / "sharded")
    lines = ORG.prompts.read_text().splitlines()[:N_PROMPTS]
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    # the final adapter is the last checkpoint's
    return {"run": run, "ckpts": ckpts, "adapter": ckpts[-1], "merged": out / "merged",
            "sharded": out / "sharded", "prompts": out / "prompts.jsonl"}


def _analyze(base, model, prompts, cache=False):
    from mechclaims.analysis import analyze
    from mechclaims.stats import StatsSettings

    return analyze(base, model, str(ORG.probe), str(prompts), StatsSettings(max_new_tokens=4), cache_dir=cache)


def test_a_lora_adapter_is_a_source_and_equals_the_merged_checkpoint(lora_run):
    from mechclaims.sources import resolve_source

    src = resolve_source(str(lora_run["adapter"]))
    assert src.kind == "adapter" and Path(src.base.location) == ORG.base.resolve()
    via_adapter = _analyze(str(ORG.base), str(lora_run["adapter"]), lora_run["prompts"])
    via_full = _analyze(str(ORG.base), str(lora_run["merged"]), lora_run["prompts"])
    np.testing.assert_array_equal(via_adapter.stats.model.act_sum, via_full.stats.model.act_sum)
    np.testing.assert_array_equal(via_adapter.weights.vw_dpo, via_full.weights.vw_dpo)
    assert via_adapter.summary["gross_reduction"] > 0  # the adapter changed something
    # BASE::ADAPTER_DIR names the same model
    both = resolve_source(f"{ORG.base}::{lora_run['adapter']}")
    assert both.kind == "adapter" and both.sha256 == src.sha256


def test_neurons_on_an_adapter_needs_no_base_and_equals_the_merged_table(lora_run, tmp_path, capsys):
    """One door (issue 19): ``mechclaims neurons --model ADAPTER_DIR`` resolves its inputs as
    ``pytest claims/`` does, so the base comes from adapter_config.json as in the plugin, and the
    table equals the merged checkpoint's against the base given by hand."""
    import csv

    from mechclaims.cli import main

    common = ["--probe", str(ORG.probe), "--prompts", str(lora_run["prompts"]), "--max-new-tokens", "4",
              "--no-cache"]
    assert main(["neurons", "--model", str(lora_run["adapter"]), *common, "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["neurons", "--model", str(lora_run["merged"]), "--base", str(ORG.base), *common,
                 "--out", str(tmp_path / "m.csv")]) == 0
    a = list(csv.DictReader((tmp_path / "a.csv").open()))
    m = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(a) == len(m) > 0
    for col in ("delta", "act_base", "act_dpo", "cos"):
        assert [r[col] for r in a] == [r[col] for r in m], col


def test_sharded_checkpoint_equals_the_single_file(lora_run):
    assert (lora_run["sharded"] / "model.safetensors.index.json").is_file()
    a = _analyze(str(ORG.base), str(lora_run["sharded"]), lora_run["prompts"])
    b = _analyze(str(ORG.base), str(lora_run["merged"]), lora_run["prompts"])
    np.testing.assert_array_equal(a.stats.model.act_sum, b.stats.model.act_sum)


def test_checkpoint_folders_hash_the_model_not_the_trainer_state(lora_run, tmp_path):
    from mechclaims.sources import resolve_source

    ck = shutil.copytree(lora_run["ckpts"][0], tmp_path / "checkpoint-2")
    assert (ck / "optimizer.pt").is_file() and (ck / "trainer_state.json").is_file()
    before = resolve_source(str(ck)).sha256
    (ck / "optimizer.pt").write_bytes(b"changed")
    (ck / "trainer_state.json").write_text("{}")
    assert resolve_source(str(ck)).sha256 == before
    st = ck / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    assert resolve_source(str(ck)).sha256 != before


def test_the_base_is_inferred_and_reported(lora_run, tmp_path):
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run

    cfg = build_config({"model": str(lora_run["adapter"]), "probe": str(ORG.probe),
                        "prompts": str(lora_run["prompts"]), "report": str(tmp_path / "r" / "claims.html"),
                        "cache_dir": str(tmp_path / "c")})
    run = resolve_run(cfg)
    assert run.base.location == str(ORG.base.resolve())
    assert run.inputs()["base"]["from"] == "adapter_config.json base_model_name_or_path"


def test_no_base_to_infer_is_one_clear_error(lora_run, tmp_path):
    from mechclaims.config import build_config
    from mechclaims.runspec import resolve_run

    cfg = build_config({"model": str(lora_run["merged"]), "probe": str(ORG.probe),
                        "prompts": str(lora_run["prompts"]), "cache_dir": str(tmp_path)})
    with pytest.raises(ModelSourceError) as err:
        resolve_run(cfg)
    msg = str(err.value)
    assert "config.json: _name_or_path" in msg and "--base BASE" in msg


def test_an_adapter_without_a_base_name_needs_base(lora_run, tmp_path):
    from mechclaims.sources import resolve_source

    ad = shutil.copytree(lora_run["adapter"], tmp_path / "ad")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSourceError, match="names no base model"):
        resolve_source(str(ad))
    assert resolve_source(str(ad), base=str(ORG.base)).kind == "adapter"


def test_sweep_over_a_training_run(lora_run, tmp_path, monkeypatch, capsys):
    """Three real TRL checkpoints, given as the run's output directory: one report, the base
    generated once for all of them (own positions), exit status from the last checkpoint."""
    import mechclaims.stats as stats
    from mechclaims.cli import main

    calls = []  # statistics passes (a generation that feeds an accumulator), per model
    real = stats.greedy_generate

    def counting(m, batch, T, acc=None):
        if acc is not None:
            calls.append(m.source)
        return real(m, batch, T, acc)

    monkeypatch.setattr(stats, "greedy_generate", counting)
    report = tmp_path / "out" / "sweep.html"
    # A short fluency text: the gate always measures perplexity (C2), on every intervention set.
    text = tmp_path / "ppl.txt"
    text.write_text(Path(ORG.defaults()["heldout"]).read_text()[:2000])
    rc = main(["sweep", str(lora_run["run"]), "--base", str(ORG.base), "--probe", str(ORG.probe),
               "--prompts", str(lora_run["prompts"]), "--max-new-tokens", "4", "--bootstrap", "20",
               "--cache-dir", str(tmp_path / "c"), "--report", str(report), "--select", "gate",
               "--ppl-text", str(text)])
    doc = json.loads(report.with_suffix(".json").read_text())
    assert [c["step"] for c in doc["checkpoints"]] == [2, 4, 6]
    assert rc == (1 if doc["last_fails_gate"] else 0)
    assert sorted({c["id"] for ck in doc["checkpoints"] for c in ck["claims"]}) == sorted(doc["gate"])
    base_calls = [s for s in calls if s == str(ORG.base.resolve())]
    assert len(base_calls) == 1 and len(calls) == 4  # one base pass, one per checkpoint
    html = report.read_text()
    assert "data:image/png;base64," in html and html.count('data-step="6"') == len(doc["gate"])
    assert "checkpoint-6" in capsys.readouterr().out


def test_sweep_bad_inputs_are_clear(tmp_path, capsys):
    from mechclaims.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["sweep", str(tmp_path / "empty"), "--base", str(ORG.base)]) == 4  # a setup error, as pytest's
    assert "checkpoint-N folders" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nothing-*"), "--base", str(ORG.base)]) == 4
    assert "matches no path" in capsys.readouterr().err
