"""Test-wide settings: the models under test are tiny, where torch's thread pool costs more than it gives."""
import torch

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped (and reported as skipped) without one")
