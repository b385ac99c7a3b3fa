"""Toy LLaVA trained on a synthetic shapes world (world.py, build.py, train.py, examples.py)."""
