"""Benchmarks: ``python -m occam.bench speed ...`` (wall-clock, memory, FLOPs) and
``python -m occam.bench accuracy ...`` (answers of pruned vs full models)."""
