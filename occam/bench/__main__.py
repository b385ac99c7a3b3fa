"""``python -m occam.bench speed|accuracy|premise|thresholds|table|gpu|diagnose|fusion|summary [options]``: dispatch to a benchmark's ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"speed": "wall-clock, memory and FLOPs of the full model vs pruning methods",
            "accuracy": "answers of the pruned models against the full model / references",
            "premise": "does a model meet the method's premise (registers, norms, sinks) on given images",
            "thresholds": "recommended alpha / beta per target retention, written beside the model",
            "throughput": "requests/s of the batched engine at several batch sizes, full vs pruned, and references",
            "table": "lmms-eval results of --model occam runs -> method x benchmark table",
            "gpu": "the whole GPU run: gpu-marked tests, speed on the real architectures, profile, summary",
            "diagnose": "where a request's time goes: profiler kernel tables, the prefill's layers alone",
            "fusion": "decoder layers in CUDA graphs: eager kernels vs torch.compile (inductor) kernels",
            "summary": "speed_*.json reports -> one compact table per report"}
USAGE = f"usage: python -m occam.bench {{{','.join(COMMANDS)}}} [options]   (--help after the command for its options)\n" + \
    "\n".join(f"  {name:<10} {what}" for name, what in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"Unknown benchmark {command!r}.\n{USAGE}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"occam.bench.{command}")
    except ModuleNotFoundError as e:
        if e.name != f"occam.bench.{command}":
            raise  # a missing dependency inside the benchmark, not the benchmark itself
        print(f"The {command!r} benchmark is not available in this checkout (no module occam/bench/{command}.py).",
              file=sys.stderr)
        return 2
    if not hasattr(module, "main"):
        print(f"occam.bench.{command} has no main(argv) function.", file=sys.stderr)
        return 2
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
