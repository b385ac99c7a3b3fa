"""The premise report runs on the toy model and on tiny models of all four families, from a generated
image set and from a folder, and reports what each family has: registers, norms, sinks."""
import json
import math

import pytest
import torch

import occam
from occam.archs import TINY_ARCH_NAMES
from occam.bench import premise
from occam.bench.common import load_vlm
from occam.toy import world


def _check_rows(rep: dict, n_images: int) -> None:
    assert len(rep["rows"]) == n_images
    for r in rep["rows"]:
        assert r["group"] in ("plain", "busy") and r["busyness"] >= 0
        assert r["norm_max_ratio"] >= 1 and 0 <= r["high_norm_frac"] <= 1
        assert r["lm_sinks"] >= 0 and r["layer_K"] == max(1, round(0.34 * rep["num_layers"]))
        if r["registers"]:   # a register reference exists: every register measure is defined
            assert r["rho"] > 0 and r["rho_over_median_e"] == pytest.approx(r["rho"] / r["median_e"])
            assert 0 <= r["kept_at_alpha1"] <= 1 and 0 < r["register_attention_share"] < 1
            assert 0 < r["register_attention_to_patches"] <= 1
        else:                # none found: nothing is invented
            assert r["rho"] is None and r["register_source"] == "none" and r["register_attention_share"] is None


@pytest.mark.parametrize("model", TINY_ARCH_NAMES)
def test_premise_report_runs_on_every_family(model, tmp_path):
    out = tmp_path / "premise"
    rep = premise.main(["--model", model, "--per-group", "1", "--out", str(out)])
    _check_rows(rep, 2)
    assert [r["group"] for r in rep["rows"]] == ["plain", "busy"]
    assert json.loads(out.with_suffix(".json").read_text())["family"] == rep["family"]
    md = out.with_suffix(".md").read_text()
    assert "Prediction" in md and md.count("| plain_0 |") == 1


def test_premise_report_on_the_toy_sees_its_explicit_registers(tmp_path):
    rep = premise.main(["--model", "toy", "--per-group", "2", "--out", str(tmp_path / "p")])
    _check_rows(rep, 4)
    for r in rep["rows"]:
        assert r["registers"] == 4 and r["register_source"] == "explicit" and r["num_visual"] == 68
        assert r["register_uniform_share"] == pytest.approx(4 / 68)
        assert r["register_norm_ratio"] > 0
    agg = rep["aggregate"]
    assert agg["n_images"] == {"plain": 2, "busy": 2} and agg["prediction_holds"] in (True, False)
    plain = [r["rho_over_median_e"] for r in rep["rows"] if r["group"] == "plain"]
    assert agg["group_means"]["plain"]["rho_over_median_e"] == pytest.approx(sum(plain) / 2)


def test_premise_report_on_a_folder_splits_by_busyness(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, bg, k in (("a", "plain", 1), ("b", "noise", 6), ("c", "texture", 6), ("d", "plain", 1)):
        world.render(world.make_scene(7, k, background=bg)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    rep = premise.main(["--model", "toy", "--images", str(folder), "--out", str(tmp_path / "p")])
    _check_rows(rep, 4)
    assert [r["image"] for r in rep["rows"]] == ["a.png", "b.png", "c.png", "d.png"]
    assert {r["image"] for r in rep["rows"] if r["group"] == "plain"} == {"a.png", "d.png"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        premise.folder_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        premise.folder_images(str(tmp_path / "missing"))


def test_vision_stats_norms_follow_the_visual_tokens():
    vlm = load_vlm("tiny-llava-next")
    ad = vlm.adapter
    image = world.render(world.make_scene(3, 2))
    with torch.inference_mode():
        vis = ad.encode(ad.prepare(image, "what is it?"))
        st = ad.stats(vis, occam.OccamConfig())
    assert st.norms.shape == (vis.n,)
    newline = torch.tensor([k == "newline" for k in vis.kinds])
    assert newline.any() and torch.isnan(st.norms[newline]).all() and (st.norms[~newline] > 0).all()


def test_spearman_ranks_with_ties():
    assert premise.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert premise.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert premise.spearman([1, 2, 3], [5, 5, 5]) is None and premise.spearman([1, 2], [1, 2]) is None
    assert premise.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert not math.isnan(premise.spearman([3, 1, 2], [1, 2, 3]))
