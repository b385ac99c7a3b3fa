"""The accuracy benchmark runs end to end on the shipped toy model (tiny sample) and writes its outputs."""
import json

from PIL import Image

from occam.bench import accuracy


def test_accuracy_benchmark_end_to_end(tmp_path):
    out = tmp_path / "acc"
    rep = accuracy.main(["--model", "toy", "--n", "10", "--calib", "3", "--retentions", "0.25",
                         "--methods", "occam", "occam-stage1-only", "topk", "fastv", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["n"] == 10 and len(data["results"]) == 4
    assert {r["method"] for r in data["results"]} == {"occam", "occam-stage1-only", "topk", "fastv"}
    for r in data["results"]:
        assert 0 < r["retention"] <= 1 and 0 <= r["accuracy"] <= 1
        assert set(r["per_type"]) == {"color", "count", "exist", "position", "shape"}
    fixed = [r for r in data["results"] if r["method"] in ("topk", "fastv")]
    assert all(r["kept_std"] == 0 for r in fixed)           # fixed budget: same count on every input
    md = out.with_suffix(".md").read_text()
    assert md.count("| 0.25 |") == 4 and "full model accuracy" in md
    assert Image.open(out.with_suffix(".png")).size == (900, 560)
    assert rep["full"]["accuracy"] == data["full"]["accuracy"]
