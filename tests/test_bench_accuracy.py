"""The accuracy benchmark runs end to end on the shipped toy model (tiny sample, two seeds) and writes its
outputs: pooled accuracy with intervals, per-seed accuracy, prefill compute, and paired tests."""
import json

import pytest
from PIL import Image

from occam.bench import accuracy, stats


def test_accuracy_benchmark_end_to_end(tmp_path):
    out = tmp_path / "acc"
    rep = accuracy.main(["--model", "toy", "--n", "6", "--calib", "3", "--seeds", "0", "1", "--retentions", "0.25",
                         "--methods", "occam", "occam-stage1-only", "topk", "fastv", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["n"] == 6 and data["seeds"] == [0, 1] and len(data["results"]) == 4
    assert {r["method"] for r in data["results"]} == {"occam", "occam-stage1-only", "topk", "fastv"}
    assert len(data["full"]["per_seed"]) == 2
    by_method = {r["method"]: r for r in data["results"]}
    for r in data["results"]:
        assert 0 < r["retention"] <= 1 and r["n"] == 12 and len(r["per_seed"]) == 2
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        right = sum(c == "1" for c in "".join(r["correct"]))
        assert r["accuracy"] == right / 12 and r["per_seed"] == [s.count("1") / 6 for s in r["correct"]]
        assert set(r["per_type"]) == {"color", "count", "exist", "position", "shape"}
        assert 0 < r["flops_rel"] < 1 and 0 < r["token_layers_rel"] < 1
    assert all(by_method[m]["kept_std"] == 0 for m in ("topk", "fastv"))   # fixed budget: same count on every input
    # same final retention, but FastV keeps every token before its layer while topk prunes at the vision side
    assert by_method["topk"]["flops_rel"] < by_method["fastv"]["flops_rel"]
    # paired tests: occam against each other method, counts taken from the per-question outcomes
    assert [t["method"] for t in data["tests"]] == ["occam-stage1-only", "topk", "fastv"]
    ref = "".join(by_method["occam"]["correct"])
    for t in data["tests"]:
        other = "".join(by_method[t["method"]]["correct"])
        assert (t["only_reference"], t["only_method"]) == stats.discordant([c == "1" for c in ref],
                                                                           [c == "1" for c in other])
        assert 0 <= t["p"] <= t["p_holm"] <= 1 and t["verdict"] in ("win", "loss", "tie")
    md = out.with_suffix(".md").read_text()
    assert md.count("| 0.25 |") == 4 + 3 and "full model accuracy" in md and "Holm" in md
    assert Image.open(out.with_suffix(".png")).size == (1400, 560)
    assert rep["full"]["accuracy"] == data["full"]["accuracy"]
    # re-rendered from the saved JSON, with a paired test across rows: the same counts as the built-in test
    again = accuracy.main(["--from", str(out.with_suffix(".json")), "--pair", "0.25:occam", "0.25:topk",
                           "--out", str(tmp_path / "again")])
    (extra,) = again["pair_tests"]
    builtin = next(t for t in data["tests"] if t["method"] == "topk")
    assert (extra["only_first"], extra["only_second"], extra["p"]) == (builtin["only_reference"],
                                                                        builtin["only_method"], builtin["p"])
    assert "across rows" in (tmp_path / "again.md").read_text()
    # two runs on the same questions merge into one report, Holm-corrected again over all their tests
    other = json.loads(json.dumps(data))
    for row in other["results"] + other["tests"]:
        row["target"] = 0.5
    merged = accuracy.merge([data, other])
    assert [r["target"] for r in merged["results"]] == [0.5] * 4 + [0.25] * 4 and len(merged["tests"]) == 6
    assert sorted(t["p_holm"] for t in merged["tests"]) == sorted(stats.holm([t["p"] for t in merged["tests"]]))
    other["seeds"] = [5]
    with pytest.raises(ValueError, match="same questions"):
        accuracy.merge([data, other])


def test_paired_tests_holm_over_all_and_each_pair_once():
    n = 40
    outcomes = {(0.25, "occam"): [True] * n, (0.25, "stage2"): [True] * n,
                (0.25, "random"): [False] * 30 + [True] * 10}
    tests = accuracy.paired_tests(outcomes, ["occam", "stage2"])
    pairs = [(t["reference"], t["method"]) for t in tests]
    assert pairs == [("occam", "stage2"), ("occam", "random"), ("stage2", "random")]   # occam vs stage2 once
    by = dict(zip(pairs, tests))
    assert by[("occam", "random")]["only_reference"] == 30 and by[("occam", "random")]["verdict"] == "win"
    assert by[("occam", "stage2")]["verdict"] == "tie" and by[("occam", "stage2")]["p"] == 1.0
    assert [t["p_holm"] for t in tests] == stats.holm([t["p"] for t in tests])
