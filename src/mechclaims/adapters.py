"""PEFT adapters: the one place an adapter is merged into its base.

Used by ``loading`` for adapter sources (``BASE::ADAPTER_DIR``, a ``checkpoint-N/`` of a LoRA
run) and by ``organism`` for ``organism:gpt2-lora``. PEFT reads the adapter weights with
safetensors (or ``torch.load(weights_only=True)``), never an arbitrary pickle; a pickle it
refuses is named by ``loading`` with the project's message (``weight_files.torch_load_error``).
The adapter's files are checked before its base loads (``inspect_source.check_adapter_dir``).
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
    except Exception as exc:  # noqa: BLE001 - a broken adapter_model.safetensors raises SafetensorError
        # A refused pickle (pickle.UnpicklingError) goes up as it is: loading words it as it words
        # pytorch_model.bin's (this module sits below weight_files, which has the message).
        expected = isinstance(exc, (OSError, ValueError, KeyError, RuntimeError))
        if not expected and type(exc).__name__ != "SafetensorError":
            raise
        raise ModelSourceError(
            f"could not apply the adapter {str(adapter_dir)!r} to its base {base_label!r} "
            f"({type(exc).__name__}: {str(exc)[:300]}); is it an adapter of this base?") from exc
