"""Bundles and their lifecycle: contract, signatures, registry, inference, rollout."""
