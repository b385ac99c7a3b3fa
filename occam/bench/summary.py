"""``python -m occam.bench summary DIR_OR_FILE ...``: one compact table per speed report (``speed_*.json``).

Per report: the model, its prompt / visual tokens, the unmodified HF forward and occam's ``none`` over it;
then per variant the kept tokens, prefill / scoring / TTFT medians (ms), the measured prefill speed-up, the
roofline-ideal one, their ratio, the TTFT speed-up and scoring's share of the full prefill. It reads only
the JSON the speed benchmark wrote (``bench_results/h200/summary.txt`` is this over that folder).

    python -m occam.bench summary bench_results/h200
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = "label kept prefill scoring ttft | meas× roof× meas/roof ttft× score%"


def report_paths(inputs: list[str]) -> list[Path]:
    """The speed reports named: files as given, folders as their ``speed_*.json`` (sorted)."""
    out = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(p.glob("speed_*.json"))
            if not found:
                raise ValueError(f"{p} holds no speed_*.json report: run `python -m occam.bench speed --out {p}/...` "
                                 "first, or name the JSON files.")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{p} is neither a speed report nor a folder of them.")
    return out


def _ms(timings: dict, key: str) -> float:
    t = timings.get(key) or {}
    return t["median"] * 1e3 if t.get("median") is not None else float("nan")


def report_summary(report: dict, name: str) -> str:
    """The block of one speed report: its header line, the column names, one row per variant."""
    d = report
    lines = [f"{name}: {d['model']} prompt {d['prompt_tokens']} vis {d['visual_tokens']} "
             f"hf {d['hf_forward_s']['median'] * 1e3:.1f}ms none/hf {d['none_over_hf']:.2f}", HEADER]
    for v in d["variants"]:
        t = v["timings"]
        m = v.get("measured_prefill_speedup") or {}
        tt = v.get("ttft_speedup") or {}
        lines.append(
            f"{v['label']:15s} {v['counts']['final']:5d} {_ms(t, 'prefill_s'):6.1f} {_ms(t, 'scoring_s'):5.2f} "
            f"{v['ttft_s']['median'] * 1e3:6.1f} | {(m.get('median') or 1):5.2f} "
            f"{(v.get('roofline_ideal_prefill_speedup') or 1):5.2f} {(v.get('measured_over_roofline') or 1) * 100:4.0f}% "
            f"{(tt.get('median') or 1):5.2f} {(v.get('scoring_share_of_full_prefill') or 0) * 100:5.1f}%")
    return "\n".join(lines)


def summary(paths: list[Path]) -> str:
    """The blocks of the given reports, one blank line before each."""
    return "".join(f"\n{report_summary(json.loads(p.read_text()), p.name)}\n" for p in paths)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m occam.bench summary", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="speed_*.json reports or folders holding them")
    args = p.parse_args(argv)
    try:
        paths = report_paths(args.inputs)
    except ValueError as e:
        p.error(str(e))
    text = summary(paths)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
