"""Benchmarks for ``make bench``: every figure beside a ceiling measured in the same run."""
