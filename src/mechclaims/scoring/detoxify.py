"""``DetoxifyScorer``: Detoxify (Yang et al.'s HEAD scorer: ``Detoxify("original")``
``toxicity``), run from local files only; a probability in [0, 1].

Detoxify checkpoints are torch pickles (a dict of its config and state dict). ``DetoxifyScorer``
reads them with ``torch.load(weights_only=True)`` only: plain containers and tensors, so a
file that would need code to unpickle is refused, whoever made it (the refusal says how to strip
a checkpoint you trust down to its config and state dict, once, where you trust it). It reads a
file only when the user names it (``checkpoint=``) or when it sits in the torch-hub cache under
the official release file name (where ``Detoxify()`` itself would put it).
``import detoxify`` here is the installed package (absolute imports), not this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ScorerError
from .common import _check_texts


DETOXIFY_RELEASE_URL = "https://github.com/unitaryai/detoxify/releases/download/"
# variant -> (release path under DETOXIFY_RELEASE_URL, HF model type the checkpoint names)
DETOXIFY_RELEASES = {
    "original": ("v0.1-alpha/toxic_original-c1212f89.ckpt", "bert-base-uncased"),
    "unbiased": ("v0.3-alpha/toxic_debiased-c7548aa0.ckpt", "roberta-base"),
    "multilingual": ("v0.4-alpha/multilingual_debiased-0b549669.ckpt", "xlm-roberta-base"),
    "original-small": ("v0.1.2/original-albert-0e1d6498.ckpt", "albert-base-v2"),
    "unbiased-small": ("v0.1.2/unbiased-albert-c8519128.ckpt", "albert-base-v2"),
}
# HF model type -> acceptable tokenizer file sets (any one set, plus config.json)
_TOKENIZER_FILES = {
    "bert": (("vocab.txt",), ("tokenizer.json",)),
    "roberta": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
    "xlm-roberta": (("sentencepiece.bpe.model",), ("tokenizer.json",)),
    "albert": (("spiece.model",), ("tokenizer.json",)),
}
_ANY_TOKENIZER_FILE = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")
# Detoxify's own renaming of the Jigsaw class names (detoxify.detoxify.load_checkpoint)
_DETOXIFY_CLASS_NAMES = {"toxic": "toxicity", "identity_hate": "identity_attack",
                         "severe_toxic": "severe_toxicity"}


def _tokenizer_file_sets(model_type: str) -> tuple[tuple[str, ...], ...]:
    base = Path(model_type).name.lower()
    for key in ("xlm-roberta", "roberta", "albert", "bert"):  # longest prefix first
        if base.startswith(key):
            return _TOKENIZER_FILES[key]
    return tuple((f,) for f in _ANY_TOKENIZER_FILE)


def _describe_sets(sets) -> str:
    return " or ".join("config.json + " + " + ".join(s) for s in sets)


def _hf_cache_snapshot(model_type: str, cache_dir) -> tuple[Path | None, list[str]]:
    """The local HF-cache snapshot directory holding ``model_type``'s config and tokenizer
    files, or (None, the files it lacks)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name):
        try:
            p = try_to_load_from_cache(model_type, name, cache_dir=cache_dir)
        except (ValueError, OSError):  # not a valid repo id (HFValidationError is a ValueError)
            return None
        return Path(p) if isinstance(p, (str, os.PathLike)) else None

    cfg = cached("config.json")
    sets = _tokenizer_file_sets(model_type)
    for s in sets:
        files = [cached(f) for f in s]
        if cfg is not None and all(f is not None and f.parent == cfg.parent for f in files):
            return cfg.parent, []
    missing = ([] if cfg else ["config.json"]) + [f for f in sets[0] if cached(f) is None]
    return None, missing


def _check_hf_dir(hf_dir: Path, model_type: str | None) -> None:
    if not hf_dir.is_dir():
        raise ScorerError(
            f"hf_dir {str(hf_dir)!r} is not a directory; expected a local directory with the "
            "Hugging Face config and tokenizer files of the Detoxify checkpoint's base model "
            "(for 'original': bert-base-uncased's config.json and vocab.txt)."
        )
    sets = _tokenizer_file_sets(model_type or "")
    have_cfg = (hf_dir / "config.json").is_file()
    if not have_cfg or not any(all((hf_dir / f).is_file() for f in s) for s in sets):
        present = sorted(p.name for p in hf_dir.iterdir())[:12]
        raise ScorerError(
            f"hf_dir {str(hf_dir)!r} lacks the files Detoxify needs: expected "
            f"{_describe_sets(sets)} (the files of {model_type or 'the base model'} on the HF "
            f"hub); found {present}. Download them while online, e.g. `huggingface-cli download "
            f"{model_type or 'bert-base-uncased'} config.json {' '.join(sets[0])} "
            f"tokenizer_config.json --local-dir {hf_dir}`."
        )


def _detoxify_class():
    from detoxify import Detoxify

    class LocalDetoxify(Detoxify):
        """A real ``detoxify.Detoxify`` (its ``predict``) over a model and tokenizer built by
        ``detoxify.detoxify.get_model_and_tokenizer`` from local files."""

        def __init__(self, model, tokenizer, class_names, device):  # noqa: D401 - no super().__init__
            self.model, self.tokenizer, self.class_names, self.device = model, tokenizer, class_names, device
            self.model.to(device)

    return LocalDetoxify


class DetoxifyScorer:
    """Detoxify's probability for one attribute (default ``toxicity``), offline.

    Files it can work from (nothing is ever downloaded):

    (a) ``checkpoint=PATH`` (a Detoxify ``.ckpt``, e.g. the release file) plus ``hf_dir=DIR``, a
        local directory with the HF config and tokenizer files of the checkpoint's base model
        (``bert-base-uncased`` for ``original``: ``config.json``, ``vocab.txt``). The checkpoint's
        ``config.arch.args.model_type`` (a hub name) is rewritten to ``DIR`` before Detoxify
        builds the model, because Detoxify 0.5.4 always calls ``from_pretrained(model_type)``
        first, even with ``huggingface_config_path=`` (which therefore does not make it offline).
    (b) the release checkpoint in the torch-hub cache under its official file name,
        ``$TORCH_HOME/hub/checkpoints/<release file>`` (``torch.hub.get_dir()``, where
        ``Detoxify(variant)`` itself would download it), plus either ``hf_dir`` or an HF-cache
        entry (``huggingface-cli download bert-base-uncased config.json vocab.txt``) for the base
        model type. The HF-cache snapshot directory is then used as in (a).

    Security: a Detoxify checkpoint is a pickle; it is read with ``torch.load(weights_only=True)``
    only, so one that holds anything but containers, strings, numbers and tensors is refused,
    never unpickled. Without ``checkpoint=`` only the official release file name in the
    torch-hub cache is opened.

    ``variant``: ``original`` (Yang et al.'s HEAD scorer), ``unbiased``, ``multilingual`` (and
    the ``-small`` ALBERT models). ``attribute``: a class name of the checkpoint (``toxicity``,
    ``severe_toxicity``, ``obscene``, ``threat``, ``insult``, ``identity_attack``, ...), or
    ``max`` for the maximum over all classes (as the paper's Perspective metric did over its 7
    attributes, A11). ``hf_cache_dir`` / ``torch_hub_dir`` override the default caches.
    """

    def __init__(self, variant: str = "original", checkpoint: str | Path | None = None,
                 hf_dir: str | Path | None = None, device: str = "cpu", attribute: str = "toxicity",
                 *, batch_size: int = 32, hf_cache_dir: str | Path | None = None,
                 torch_hub_dir: str | Path | None = None):
        if variant not in DETOXIFY_RELEASES:
            raise ScorerError(f"Detoxify variant {variant!r} is unknown; choose one of {sorted(DETOXIFY_RELEASES)}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ScorerError(f"batch_size must be a positive integer, got {batch_size!r}.")
        try:
            import detoxify  # noqa: F401
        except ImportError as exc:
            raise ScorerError(
                "DetoxifyScorer needs the `detoxify` package, which is not installed. Install it "
                "with `pip install 'mechclaims[detoxify]'` (detoxify>=0.5.4), or use LexiconScorer "
                "or ProbeScorer."
            ) from exc
        self.variant, self.device, self.attribute, self.batch_size = variant, str(device), attribute, batch_size
        release, default_type = DETOXIFY_RELEASES[variant]
        self.release_file = release.rsplit("/", 1)[1]
        self.release_url = DETOXIFY_RELEASE_URL + release
        hf_dir = Path(hf_dir).expanduser().resolve() if hf_dir is not None else None
        if checkpoint is not None:
            ckpt = Path(checkpoint).expanduser()
            if not ckpt.is_file():
                raise ScorerError(
                    f"Detoxify checkpoint {str(checkpoint)!r} "
                    f"{'is a directory' if ckpt.is_dir() else 'does not exist'} (looked at "
                    f"{ckpt.resolve()}); expected a Detoxify .ckpt such as {self.release_file} "
                    f"({self.release_url})."
                )
            self.checkpoint_source = "explicit"
        else:
            hub = Path(torch_hub_dir).expanduser() if torch_hub_dir else _torch_hub_dir()
            ckpt = hub / "checkpoints" / self.release_file
            self.checkpoint_source = "torch-hub cache"
            missing = []
            if not ckpt.is_file():
                missing.append(
                    f"the release checkpoint {self.release_file}: not found at {ckpt}. Download "
                    f"{self.release_url} (while online) into the torch hub checkpoints directory "
                    f"{ckpt.parent}/ ($TORCH_HOME/hub/checkpoints), or pass checkpoint=PATH."
                )
            if hf_dir is None:
                snap, lacking = _hf_cache_snapshot(default_type, hf_cache_dir)
                if snap is None:
                    missing.append(self._hf_missing_text(default_type, lacking, hf_cache_dir))
            if missing:
                raise ScorerError(
                    f"Detoxify {variant!r} cannot be loaded offline; missing:\n  - "
                    + "\n  - ".join(missing)
                    + "\nOr pass checkpoint=PATH (a trusted Detoxify .ckpt) and hf_dir=DIR (its base "
                    "model's config and tokenizer files)."
                )
        self.checkpoint = ckpt.resolve()
        self._detox = self._build(hf_dir, hf_cache_dir)
        names = list(self._detox.class_names)
        if attribute != "max" and attribute not in names:
            raise ScorerError(
                f"attribute {attribute!r} is not a class of this Detoxify checkpoint; its classes "
                f"are {names}, or use 'max' for the maximum over them."
            )
        self.name = f"detoxify-{variant}:{attribute}"

    @staticmethod
    def _hf_missing_text(model_type: str, lacking: list[str], cache_dir) -> str:
        from huggingface_hub import constants

        where = cache_dir or constants.HF_HUB_CACHE
        files = " ".join(lacking + ["tokenizer_config.json"])
        return (f"the Hugging Face files of {model_type!r} ({', '.join(lacking)}): not in the HF "
                f"cache {where}. While online run `huggingface-cli download {model_type} {files}`, "
                f"or put {_describe_sets(_tokenizer_file_sets(model_type))} in a directory and pass "
                "hf_dir=DIR.")

    def _build(self, hf_dir: Path | None, hf_cache_dir):
        import torch
        from detoxify import detoxify as dx
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        import pickle

        try:
            loaded = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ScorerError(
                f"refused to unpickle the Detoxify checkpoint {str(self.checkpoint)!r}: it holds "
                f"objects beyond plain containers and tensors ({str(exc)[:200]}). mechclaims never runs "
                "code from a checkpoint. If the file comes from a source you trust, keep only what "
                "Detoxify reads, once, where you trust it: ck = torch.load(PATH, weights_only=False); "
                "torch.save({'config': ck['config'], 'state_dict': ck['state_dict']}, 'clean.ckpt'); "
                "then pass checkpoint='clean.ckpt'."
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a broken pickle raises anything
            raise ScorerError(
                f"could not read the Detoxify checkpoint {str(self.checkpoint)!r} "
                f"({type(exc).__name__}: {str(exc)[:200]}); is the file complete? Re-download "
                f"{self.release_url}."
            ) from exc
        try:
            args = dict(loaded["config"]["arch"]["args"])
            classes = list(loaded["config"]["dataset"]["args"]["classes"])
            state = loaded["state_dict"]
        except (KeyError, TypeError) as exc:
            raise ScorerError(
                f"{str(self.checkpoint)!r} is not a Detoxify checkpoint: expected a dict with "
                "'state_dict' and 'config' holding config['arch']['args'] (model_type, model_name, "
                f"tokenizer_name, num_classes) and config['dataset']['args']['classes'] (missing {exc})."
            ) from exc
        model_type = str(args.get("model_type", ""))
        self.checkpoint_model_type = model_type
        if hf_dir is not None:
            _check_hf_dir(hf_dir, model_type)
            local = hf_dir
        elif Path(model_type).is_dir():
            local = Path(model_type)
        else:
            local, lacking = _hf_cache_snapshot(model_type, hf_cache_dir)
            if local is None:
                raise ScorerError(
                    f"the Detoxify checkpoint {str(self.checkpoint)!r} is built on {model_type!r}, "
                    "whose files are missing:\n  - " + self._hf_missing_text(model_type, lacking, hf_cache_dir)
                )
        self.hf_dir = Path(local)
        args["model_type"] = str(local)  # the rewrite: Detoxify reads config + tokenizer from here
        try:
            model, tokenizer = dx.get_model_and_tokenizer(**args, state_dict=state)
        except Exception as exc:  # noqa: BLE001 - transformers raises many types
            raise ScorerError(
                f"Detoxify could not build {args.get('model_name')!r} from {str(local)!r} with the "
                f"checkpoint {str(self.checkpoint)!r} ({type(exc).__name__}: {str(exc)[:300]}). "
                f"Are the files in {str(local)!r} those of {model_type!r}?"
            ) from exc
        cfg = model.config
        limit = int(getattr(cfg, "max_position_embeddings", 512))
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta"):
            limit -= int(getattr(cfg, "pad_token_id", 1) or 1) + 1  # positions start after padding_idx
        if not tokenizer.model_max_length or tokenizer.model_max_length > limit:
            tokenizer.model_max_length = limit  # so predict's truncation=True truncates
        class_names = [_DETOXIFY_CLASS_NAMES.get(c, c) for c in classes]
        return _detoxify_class()(model.eval(), tokenizer, class_names, self.device)

    @property
    def detoxify(self):
        """The underlying ``detoxify.Detoxify`` instance."""
        return self._detox

    def predict_all(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Every class's probability, ``{class: float64 [len(texts)]}``, batched."""
        _check_texts(texts)
        out = {c: [] for c in self._detox.class_names}
        for i in range(0, len(texts), self.batch_size):
            res = self._detox.predict(list(texts[i:i + self.batch_size]))
            for c in out:
                out[c].append(np.atleast_1d(np.asarray(res[c], dtype=np.float64)))
        return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in out.items()}

    def score(self, texts: Sequence[str]) -> np.ndarray:
        probs = self.predict_all(texts)
        if self.attribute == "max":
            return np.max(np.stack(list(probs.values())), axis=0) if len(texts) else np.zeros(0)
        return probs[self.attribute]

    def describe(self) -> dict:
        from ..cache import default_cache_dir, sha256_file_memo

        return {"name": self.name, "kind": "detoxify", "units": "probability in [0, 1]",
                "variant": self.variant, "attribute": self.attribute,
                "classes": list(self._detox.class_names),
                "checkpoint": str(self.checkpoint), "checkpoint_source": self.checkpoint_source,
                "checkpoint_sha256": sha256_file_memo(self.checkpoint, default_cache_dir()),
                "checkpoint_model_type": self.checkpoint_model_type, "hf_dir": str(self.hf_dir)}

    def __repr__(self) -> str:
        return f"DetoxifyScorer({self.variant!r}, checkpoint={str(self.checkpoint)!r}, attribute={self.attribute!r})"


def _torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())

