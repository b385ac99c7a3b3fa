"""The speed benchmark end to end on a tiny model (no timing assertions), its helpers and the dispatcher."""
from __future__ import annotations

import json
import sys

import pytest

from occam.bench import __main__ as dispatcher
from occam.bench import common, speed

VARIANT_KEYS = {"label", "method", "target_retention", "config", "counts", "sequence", "flops", "kv_cache_bytes",
                "kv_cache_bytes_by_hand", "peak_memory_bytes", "timings", "ttft_s", "flops_ideal_prefill_speedup",
                "measured_prefill_speedup", "measured_over_ideal", "best_prefill_speedup", "best_over_ideal",
                "roofline_ideal_prefill_speedup", "measured_over_roofline",
                "ttft_speedup", "scoring_share_of_full_prefill",
                "vision_delta_share_of_full_prefill", "checks"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "speed_tiny.md"
    report = speed.main(["--model", "tiny-llava", "--reps", "1", "--warmup", "1", "--max-new-tokens", "3",
                         "--image-size", "160x120", "--retention", "0.25", "0.5", "--out", str(out), "--quiet"])
    return report, out


def test_report_is_written_as_markdown_and_json(bench):
    report, out = bench
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("model", "family", "device", "dtype", "reps", "warmup", "visual_tokens", "prompt_tokens",
                "memory_kind", "command", "variants"):
        assert key in saved
    assert saved["reps"] == 1 and saved["family"] == "llava"
    labels = [v["label"] for v in saved["variants"]]
    assert labels == ["none"] + [f"{m}@{t}" for t in ("0.25", "0.5") for m in ("occam", "topk", "fastv", "visionzip")]
    for v in saved["variants"]:
        assert set(v) == VARIANT_KEYS
        # one round: every pruned variant once, each next to its own run of the full model
        assert v["timings"]["prefill_s"]["n"] == (8 if v["method"] == "none" else 1)
        assert v["timings"]["prefill_s"]["median"] > 0 and v["measured_prefill_speedup"]["n"] in (1, 8)
        assert v["checks"]["kv_bytes_match_hand_count"] and v["checks"]["kv_lengths_match_kept_tokens"]
        assert v["flops_ideal_prefill_speedup"] >= 1.0
        assert v["peak_memory_bytes"] is None or v["peak_memory_bytes"] >= 0


def test_markdown_has_one_row_per_variant_in_each_table(bench):
    report, out = bench
    md = out.with_suffix(".md").read_text()
    assert md == speed.markdown(report)
    assert "## Timings" in md and "## Speed-up against the full model" in md
    for method in ("none", "occam", "topk", "fastv", "visionzip"):
        rows = [line for line in md.splitlines() if line.startswith(f"| {method} |")]
        assert len(rows) == (2 if method == "none" else 4)   # two tables x (1 or 2 retentions)
    for section in md.split("\n## ")[1:]:
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert len(table) == 2 + len(report["variants"])               # header, rule, one row per variant
        assert len({line.count("|") for line in table}) == 1             # every row as wide as the header


def test_pruned_variants_keep_the_target_share_of_tokens(bench):
    report, _ = bench
    for v in report["variants"]:
        counts = v["counts"]
        if v["method"] == "none":
            assert counts["final"] == counts["visual"]
        else:  # occam is matched on this very input; the others keep their budget exactly
            assert abs(counts["final"] - v["target_retention"] * counts["visual"]) <= 2
            assert v["flops_ideal_prefill_speedup"] > 1.0


def test_pure_helpers():
    s = common.summarize([3.0, None, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    assert common.summarize([None]) is None and common.summarize([4.0])["q1"] == 4.0
    assert common.ratios([2.0, None, 3.0], [1.0, 1.0, 0.0]) == [2.0, None, None]
    assert speed._runs([650, 650, 209, 209, 209]) == "650×2, 209×3"
    assert [speed.fastv_layer_at(d, 32, 2) for d in (32, 16, 4, 2)] == [2, 1, 1, 1]
    assert speed.fastv_layer_at(40, 32, 2) == 2
    cfg = type("C", (), {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64})()
    assert speed.kv_bytes_by_hand(cfg, [10, 3], 4) == 2 * 2 * 16 * 4 * 13
    assert common.fmt_range({"median": 1.0, "min": 0.5, "max": 2.0, "n": 3}) == "1 [0.5–2]"


def test_bench_image_is_deterministic_and_photo_sized():
    a, b = common.bench_image(336, 336), common.bench_image(336, 336)
    assert a.size == (336, 336) and a.mode == "RGB" and a.tobytes() == b.tobytes()


def test_dispatcher_usage_unknown_and_missing_benchmark(monkeypatch, capsys):
    assert dispatcher.main([]) == 2
    assert "speed" in capsys.readouterr().out
    assert dispatcher.main(["nope"]) == 2
    assert "Unknown benchmark" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "occam.bench.accuracy", None)   # as if accuracy.py did not exist
    assert dispatcher.main(["accuracy"]) == 2
    assert "not available" in capsys.readouterr().err


def test_dispatcher_runs_speed(monkeypatch):
    seen = {}
    monkeypatch.setattr(speed, "main", lambda argv: seen.setdefault("argv", argv))
    assert dispatcher.main(["speed", "--reps", "1"]) == 0
    assert seen["argv"] == ["--reps", "1"]


def test_speed_bench_on_a_generated_video(tmp_path):
    out = tmp_path / "speed_video.md"
    report = speed.main(["--model", "tiny-video-llava", "--frames", "3", "--image-size", "64x48", "--methods", "topk",
                         "--reps", "1", "--warmup", "0", "--max-new-tokens", "2", "--retention", "0.25",
                         "--out", str(out), "--quiet"])
    assert report["frames"] == 3 and report["visual_tokens"] == 3 * 65 and report["family"] == "video_llava"
    topk = next(v for v in report["variants"] if v["method"] == "topk")
    assert topk["counts"]["final"] == 49 and sum(topk["counts"]["per_frame"]["final"]) == 49   # ceil(0.25 x 195)
    assert "3-frame video" in out.read_text()
