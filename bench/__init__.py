"""Benchmarks of the batch engine: ``python -m bench.scale`` and ``python -m bench.throughput`` (see README.md)."""
