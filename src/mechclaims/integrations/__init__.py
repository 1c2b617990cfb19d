"""Hooks into the engines users train with. ``mechclaims.integrations.trl``: a TRL/transformers
``TrainerCallback`` that runs claims on the policy as it trains."""
