"""occam.recommended: the thresholds file beside a model, lookup by target, interpolation; the CLI that writes it."""
from __future__ import annotations

import json
import math

import pytest

import occam
from occam import recommended


def rec(**kw) -> recommended.Recommended:
    entries = (recommended.Entry(0.1, 4.0, 8.0, 0.11), recommended.Entry(0.4, 1.0, 2.0, 0.39))
    return recommended.Recommended(targets=entries, calibration={"set": "unit set"}, base={"stage1": True}, **kw)


def test_exact_interpolated_and_clamped():
    r = rec()
    assert r.thresholds(0.1) == (4.0, 8.0, "exact")
    a, b, how = r.thresholds(0.2)  # log-linear: 0.2 is halfway between 0.1 and 0.4 in log
    assert how == "interpolated" and a == pytest.approx(2.0) and b == pytest.approx(4.0)
    assert r.thresholds(0.05) == (4.0, 8.0, "clamped") and r.thresholds(0.9) == (1.0, 2.0, "clamped")
    cfg = r.config(0.2)
    assert cfg.method == "occam" and cfg.alpha == pytest.approx(2.0) and cfg.stage1 is True
    cfg = r.config(0.4, base=occam.OccamConfig(stage2=False, method="topk"))
    assert (cfg.method, cfg.alpha, cfg.beta, cfg.stage2) == ("occam", 1.0, 2.0, False)
    for bad in (0, 1.5, "x", True):
        with pytest.raises(ValueError, match="target retention"):
            r.thresholds(bad)


def test_round_trip_and_unknown_knobs(tmp_path):
    r = rec(model="m", extra={"created": "now"})
    path = recommended.write(r, tmp_path)
    assert path.name == recommended.FILENAME
    back = recommended.read(path)
    assert back.targets == r.targets and back.calibration == r.calibration and back.extra == {"created": "now"}
    assert recommended.for_model(tmp_path).source == str(path)
    # knobs this OccamConfig does not have, or whose type changed, fall back to the defaults
    assert recommended.usable_knobs({"stage1": False, "no_such_knob": 1, "keep_registers": 3.5}) == {"stage1": False}


def test_missing_and_broken_files(tmp_path):
    assert recommended.for_model(tmp_path) is None
    assert recommended.for_model("no-such-org/no-such-model") is None
    (tmp_path / recommended.FILENAME).write_text("{broken")
    with pytest.raises(ValueError, match="Cannot read recommended thresholds"):
        recommended.for_model(tmp_path)
    (tmp_path / recommended.FILENAME).write_text(json.dumps({"targets": [{"target": 0.2, "alpha": -1, "beta": 1}]}))
    with pytest.raises(ValueError, match="alpha=-1 is invalid"):
        recommended.for_model(tmp_path)


def test_the_shipped_toy_file_is_attached_by_load():
    vlm = occam.load("toy")
    r = vlm.recommended
    assert r is not None and r.source.endswith("assets/toy/occam_thresholds.json")
    assert "toy-world train split" in r.calibration["set"] and r.calibration["n"] >= 100
    assert [e.target for e in r.targets] == [0.05, 0.11, 0.25, 0.5]
    for e in r.targets:  # the file records what the thresholds gave on the calibration set
        assert e.measured_retention == pytest.approx(e.target, abs=0.02)
    alphas = [e.alpha for e in r.targets]
    assert alphas == sorted(alphas, reverse=True)  # a smaller target needs a higher threshold
    assert occam.load("tiny-llava").recommended is None


def test_thresholds_cli_writes_a_file(tmp_path):
    from occam.bench import thresholds
    out = tmp_path / "t.json"
    r = thresholds.main(["--model", "toy", "--targets", "0.5", "--calib", "6", "--seed", "3", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["calibration"]["n"] == 6 and "seed=10" in data["calibration"]["set"]
    (e,) = data["targets"]
    assert e["target"] == 0.5 and e["alpha"] > 0 and e["beta"] > 0 and not math.isnan(e["measured_retention"])
    assert abs(e["measured_retention"] - 0.5) < 0.1 and r.targets[0].alpha == e["alpha"]
    assert "thresholds --model toy" in data["command"]
