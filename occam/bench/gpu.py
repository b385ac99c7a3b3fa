"""``python -m occam.bench gpu``: the whole GPU run in one command, from a checkout and nothing else.

Steps, each a subprocess with its own time limit and log (``<out>/<step>.log``); a failing step is
reported and the run goes on:

1. ``env``: Python, torch, transformers, the device (``nvidia-smi`` when present) -> ``env.txt``
2. ``gputests``: the ``gpu``-marked tests (CUDA-graph prefill = eager, device preprocessing, concurrency)
3. ``speed_*``: the speed benchmark on the four real architectures at full depth (random weights, bf16,
   one new token), Qwen2.5-VL at 1280x960 and on a 16-frame clip -> ``speed_*.md`` / ``.json``
4. ``diagnose``: profiler kernel tables and the prefill's layers alone (LLaVA-1.5-7B shapes)
5. ``fusion``: eager vs ``torch.compile`` kernels of decoder layers in CUDA graphs
6. ``throughput_*``: the batched engine at batch 1 / 4 / 16 / 64, 64 new tokens, full vs occam / topk / fastv
   at 11% (LLaVA-1.5-7B, LLaVA-NeXT-7B, Qwen2.5-VL-7B) -> ``throughput_*.md`` / ``.json``
7. ``summary``: one compact table per speed report -> ``summary.txt``

``bench_results/h200/`` holds the data and logs of such a run on an NVIDIA H200. ``--device cpu`` runs the
same plan on the tiny architectures (float32, fewer rounds): a check of the plumbing, not a measurement.
``--dry-run`` prints the plan and runs nothing.

    python -m occam.bench gpu --out bench_results/h200
    python -m occam.bench gpu --dry-run
    python -m occam.bench gpu --device cpu --only speed_llava15 summary --out /tmp/gpu-check
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REAL = {"llava15": "llava-1.5-7b", "next": "llava-next-7b", "qwen25": "qwen2.5-vl-7b", "qwen3": "qwen3-vl-8b"}
TINY = {"llava15": "tiny-llava", "next": "tiny-llava-next", "qwen25": "tiny-qwen2.5-vl", "qwen3": "tiny-qwen3-vl"}
RETENTIONS = ["0.25", "0.11", "0.05"]


@dataclass
class Step:
    name: str
    timeout_s: int
    argv: list[str]            # run with the current Python from the checkout's root
    log: str                   # file under --out that receives its stdout and stderr

    def command(self) -> str:
        return shlex.join(["python", *self.argv])


def plan(out: Path, device: str = "cuda", reps: int | None = None, warmup: int | None = None) -> list[Step]:
    """The steps of the run, in order. ``device`` "cuda": the real architectures in bf16; "cpu": the tiny ones."""
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r} is invalid: accepted 'cuda' or 'cpu'.")
    gpu = device == "cuda"
    names = REAL if gpu else TINY
    dtype = "bfloat16" if gpu else "float32"
    reps = reps if reps is not None else (10 if gpu else 2)
    warmup = warmup if warmup is not None else (3 if gpu else 1)
    speed = ["-m", "occam.bench", "speed", "--device", device, "--dtype", dtype, "--max-new-tokens", "1"] + \
        ([] if gpu else ["--threads", "1"])

    def speed_step(key: str, slug: str, *extra: str, rounds: tuple[int, int] = (reps, warmup)) -> Step:
        name = names[key] + slug
        return Step(f"speed_{key}{slug}", 900, speed + ["--model", names[key], "--reps", str(rounds[0]), "--warmup",
                                                        str(rounds[1]), *extra, "--out", str(out / f"speed_{name}.md")],
                    f"speed_{name}.log")

    steps = [
        Step("gputests", 600, ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
                               "tests/test_engine.py"], "gputests.log"),
        speed_step("llava15", "", "--retention", *RETENTIONS),
        speed_step("next", "", "--retention", *RETENTIONS, "0.014"),
        speed_step("qwen25", "", "--retention", *RETENTIONS),
        speed_step("qwen3", "", "--retention", *RETENTIONS),
        speed_step("qwen25", "_1280x960", "--image-size", "1280x960", "--retention", *RETENTIONS),
        speed_step("qwen25", "_video16", "--frames", "16", "--methods", "none", "occam", "topk", "fastv",
                   "--retention", "0.25", "0.11", rounds=(4 if gpu else 1, 1)),   # a clip: ten times longer requests
        Step("diagnose", 600, ["-m", "occam.bench", "diagnose", "--model", names["llava15"], "--device", device,
                               "--dtype", dtype] + ([] if gpu else ["--reps", "1", "--warmup", "1", "--lengths", "64"]),
             "diagnose.log"),
        Step("fusion", 600, ["-m", "occam.bench", "fusion", "--model", names["llava15"], "--device", device,
                             "--dtype", dtype] + ([] if gpu else ["--reps", "2", "--lengths", "64", "--no-compile"]),
             "fusion.log"),
        *[Step(f"throughput_{key}", 900, ["-m", "occam.bench", "throughput", "--model", names[key], "--device",
                                          device, "--dtype", dtype, "--methods", "none", "occam", "topk", "fastv",
                                          "--retentions", "0.11", "--batch-sizes", *(["1", "4", "16", "64"] if gpu
                                                                                     else ["1", "4"]),
                                          "--new-tokens", "64" if gpu else "8", "--rounds", "2" if gpu else "1",
                                          "--out", str(out / f"throughput_{key}")], f"throughput_{key}.log")
          for key in ("llava15", "next", "qwen25")],
        Step("summary", 60, ["-m", "occam.bench", "summary", str(out)], "summary.txt"),
    ]
    return steps


def environment() -> str:
    """Python, torch and transformers versions and the device, as text (``nvidia-smi`` where there is one)."""
    probe = ("import sys, torch, transformers, importlib.util as u; "
             "print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__); "
             "print('torchvision', u.find_spec('torchvision') is not None); "
             "print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    lines = [time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())]
    if shutil.which("nvidia-smi"):
        lines.append(_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,"
                                            "temperature.gpu,power.draw", "--format=csv"]))
    lines.append(_output([sys.executable, "-c", probe]))
    return "\n".join(lines) + "\n"


def _output(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).strip()


def run_step(step: Step, out: Path, root: Path) -> tuple[int, float]:
    """Run one step from ``root`` with its time limit; its output goes to ``out/step.log``. (rc, seconds)"""
    t0 = time.time()
    with open(out / step.log, "w") as log:
        try:
            rc = subprocess.run([sys.executable, *step.argv], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                timeout=step.timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            log.write(f"\n[gpu] {step.name} stopped after its limit of {step.timeout_s} s\n")
    return rc, time.time() - t0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m occam.bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_results/gpu", help="folder for reports and logs (default bench_results/gpu)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda: the real architectures in bf16 (default); cpu: the tiny ones, a check of the run")
    p.add_argument("--reps", type=int, default=None, help="timed rounds of the speed steps (default 10; cpu 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds of the speed steps (default 3; cpu 1)")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP", help="run only these steps (see --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out) if args.dry_run else Path(args.out).resolve()
    steps = plan(out, args.device, args.reps, args.warmup)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"Unknown step(s) {', '.join(unknown)}: accepted {', '.join(s.name for s in steps)}.")
        steps = [s for s in steps if s.name in args.only]
    if args.dry_run:
        print(f"# python -m occam.bench gpu --device {args.device}: {len(steps)} steps, reports and logs in {out}/")
        print(f"{'env':<22}         {out / 'env.txt'}")
        for s in steps:
            print(f"{s.name:<22} ({s.timeout_s:>4} s) {s.command()} > {out / s.log}")
        return []
    root = Path(__file__).resolve().parents[2]          # the checkout: tests/ and occam/ side by side
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.txt").write_text(environment())
    done = []
    for s in steps:
        print(f"== {s.name}: {s.command()}", flush=True)
        rc, secs = run_step(s, out, root)
        print(f"== {s.name} rc={rc} {secs:.0f}s (log: {out / s.log})", flush=True)
        done.append({"step": s.name, "rc": rc, "seconds": secs})
    with open(out / "env.txt", "a") as f:
        f.write(environment())
    failed = [d["step"] for d in done if d["rc"] != 0]
    print(f"{len(done) - len(failed)} of {len(done)} steps passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)
    return done


if __name__ == "__main__":
    main()
