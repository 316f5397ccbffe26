"""A tiny synthetic plant table and its training config (docs/train-your-own-data.md)."""
