"""Benchmarks: ``python -m occam.bench speed ...`` (wall-clock, memory, FLOPs), ``accuracy`` (answers of
pruned vs full models), ``premise``, ``thresholds``, ``table`` (lmms-eval results), and the GPU run:
``gpu`` (everything below in one command), ``diagnose`` (profile), ``fusion`` (fused kernels), ``summary``."""
