"""How much memory a device has free: the one place that asks (model-size checks, the KV-cache budget)."""
from __future__ import annotations

import torch


def free_bytes(device: torch.device | str) -> int | None:
    """Bytes free on ``device`` now: CUDA's own count on a GPU, MemAvailable on a Linux CPU, else None."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kv_budget(device: torch.device | str, share: float = 0.5) -> int | None:
    """The default KV-cache budget of one batch: ``share`` of what is free now (None: unknown, no limit)."""
    free = free_bytes(device)
    return None if free is None else int(free * share)
