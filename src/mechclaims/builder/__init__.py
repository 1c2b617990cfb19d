"""The organism builder: makes the embedded model organisms that ``mechclaims.organism`` opens.

``python -m mechclaims.builder build --arch gpt2 --out fixtures/organism/gpt2`` builds one
(seeded, deterministic on CPU); ``check DIR`` verifies a directory against its manifest;
``curve --out docs/organism-dpo-curve.png`` draws the committed organisms' DPO curves.

A leaf above the engine: every figure it records is measured by the engine (``stats``,
``attribution``, ``perplexity``, ``scoring``, ``loading``); nothing in the library imports it
(only the entry scripts, ``python -m mechclaims.builder`` and ``python -m mechclaims.organism``).

``config`` (settings, thresholds), ``corpus`` (the project's text), ``data`` (prompts, pairs,
probe texts), ``train`` (tokenizer, pretraining, DPO), ``measure`` (the engine's figures, the
dampening choice), ``build`` (the steps, the manifest, ``check``), ``figure`` (the DPO curves).
"""

import os

# A build never needs the network: offline before any builder module imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
