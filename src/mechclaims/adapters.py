"""PEFT adapters: the one place an adapter is merged into its base.

Used by ``loading`` for adapter sources (``BASE::ADAPTER_DIR``, a ``checkpoint-N/`` of a LoRA
run) and by ``organism`` for ``organism:gpt2-lora``. PEFT reads the adapter weights with
safetensors (or ``torch.load(weights_only=True)``), never an arbitrary pickle.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelSourceError


def merge_adapter(hf, adapter_dir: str | Path, *, base_label: str):
    """``hf`` (a freshly loaded base) with the adapter in ``adapter_dir`` merged into its
    weights (``merge_and_unload``): the statistics then run on the merged weights, exactly as
    if the fine-tune had been saved in full."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelSourceError(f"{str(adapter_dir)!r} is a PEFT adapter; install peft to load it "
                               "(pip install 'mechclaims[peft]').") from exc
    try:
        return PeftModel.from_pretrained(hf, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(
            f"could not apply the adapter {str(adapter_dir)!r} to its base {base_label!r} "
            f"({type(exc).__name__}: {str(exc)[:300]}); is it an adapter of this base?") from exc
