"""The method's pure functions: registers, relative evidence, thresholds, rails, config, inputs."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import occam
from occam import archs, evidence, registers
from occam.config import OccamConfig
from occam.inputs import check_question, open_image, to_rgb


def test_high_norm_registers_are_found():
    torch.manual_seed(0)
    hidden = torch.randn(200, 32)
    hidden[[17, 150]] *= 20
    assert registers.high_norm_tokens(hidden, kappa=4, max_frac=0.02).tolist() == [17, 150]


def test_high_norm_registers_are_capped_at_two_percent():
    hidden = torch.randn(100, 16)
    hidden[:10] *= 50
    found = registers.high_norm_tokens(hidden, kappa=4, max_frac=0.02)
    assert found.numel() == 2 and set(found.tolist()) <= set(range(10))


def test_massive_activation_sinks_are_found():
    torch.manual_seed(1)
    hidden = torch.randn(64, 48)
    hidden[5, 7] = 400.0
    hidden[40, 3] = -350.0
    assert registers.massive_activation_tokens(hidden, kappa=10, max_frac=0.05).tolist() == [5, 40]


def test_no_registers_when_nothing_stands_out():
    torch.manual_seed(2)
    assert registers.high_norm_tokens(torch.randn(300, 32)).numel() == 0
    assert registers.massive_activation_tokens(torch.randn(300, 32)).numel() == 0


def test_relative_evidence_register_reference_and_mean_fallback():
    e = torch.tensor([0.1, 0.2, 0.4, 0.8])
    regs = torch.tensor([False, False, False, True])
    cand = ~regs
    sc = evidence.relative_evidence(e, cand, regs, "register")
    assert sc.reference_kind == "register" and sc.reference == pytest.approx(0.8)
    assert sc.scores[:3].tolist() == pytest.approx([0.125, 0.25, 0.5])
    none = torch.zeros(4, dtype=torch.bool)
    fb = evidence.relative_evidence(e, torch.ones(4, dtype=torch.bool), none, "register")
    assert fb.reference_kind == "mean" and fb.reference == pytest.approx(0.375)


def test_threshold_keeps_registers_and_applies_rails():
    s = torch.tensor([0.5, 1.5, 2.0, float("nan"), 0.9])
    regs = torch.tensor([False, False, False, True, False])
    cand = ~regs
    keep, rail = evidence.keep_by_threshold(s, cand, regs, 1.0)
    assert keep.tolist() == [False, True, True, True, False] and rail is None
    keep, rail = evidence.keep_by_threshold(s, cand, regs, 1.0, max_tokens=2)
    assert keep.tolist() == [False, False, True, True, False] and rail == "max"
    keep, rail = evidence.keep_by_threshold(s, cand, regs, 1.0, min_tokens=4)
    assert keep.tolist() == [False, True, True, True, True] and rail == "min"
    keep, _ = evidence.keep_by_threshold(s, cand, torch.zeros_like(regs), 1.0)
    assert keep.tolist() == [False, True, True, False, False]


def test_attention_rows_match_dense_softmax_and_are_causal():
    torch.manual_seed(3)
    q, k = torch.randn(2, 7, 4), torch.randn(2, 7, 4)
    rows = torch.tensor([2, 5, 6])
    dense = torch.softmax(q @ k.transpose(1, 2) * 0.5 + torch.full((7, 7), float("-inf")).triu(1), dim=-1)
    got = evidence.attention_rows(q[:, rows], k, 0.5, chunk=2, row_positions=rows)
    torch.testing.assert_close(got, dense[:, rows].mean(dim=0))


def test_attention_colmeans_match_dense_softmax_in_one_pass_or_in_blocks(monkeypatch):
    torch.manual_seed(4)
    q, k = torch.randn(3, 2, 9, 4), torch.randn(3, 2, 9, 4)          # (B, H, T, d)
    regs = torch.zeros(3, 9, dtype=torch.bool)
    regs[:, 1:3] = True
    regs[2] = False                                                   # a tile without registers
    w = torch.stack([(~regs).float() / (~regs).sum(1, keepdim=True),
                     regs.float() / regs.sum(1, keepdim=True).clamp(min=1)], 1)
    dense = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1).mean(dim=1)   # (B, T, T) head-averaged
    expect = torch.einsum("bwr,brs->bws", w, dense)
    torch.testing.assert_close(evidence.attention_colmeans(q, k, 0.5, w), expect)
    monkeypatch.setattr(evidence, "ONE_SHOT_ELEMENTS", 1)             # blocks of `chunk` rows
    torch.testing.assert_close(evidence.attention_colmeans(q, k, 0.5, w, chunk=2), expect)
    assert evidence.attention_colmeans(q, k, 0.5, w)[2, 1].abs().max() == 0   # no registers: zero row


def test_outlier_mask_is_high_norm_tokens_without_a_host_sync():
    torch.manual_seed(5)
    for n in (7, 60, 333):
        hidden = torch.randn(n, 16)
        hidden[torch.randint(0, n, (4,))] *= 12
        expect = torch.zeros(n, dtype=torch.bool)
        expect[registers.high_norm_tokens(hidden, kappa=4, max_frac=0.02)] = True
        assert torch.equal(registers.outlier_mask(hidden.norm(dim=-1)[None], 4, 0.02, n)[0], expect)
    values = torch.tensor([[1.0, float("nan"), 1.0, 9.0, 1.0]])      # NaN: not a candidate
    assert registers.outlier_mask(values, 4, 0.5, 4).tolist() == [[False, False, False, True, False]]


def test_visionzip_groups_merge_every_non_dominant_token():
    cls = torch.tensor([0.9, 0.1, 0.05, 0.8, 0.02, 0.03])
    keys = torch.eye(6)
    dominant, assign = evidence.visionzip_groups(cls, keys, n_dominant=2, n_contextual=2)
    assert dominant.tolist() == [True, False, False, True, False, False]
    assert (assign[~dominant] >= 0).all() and (assign[dominant] == -1).all()


def test_random_keep_is_seeded():
    assert torch.equal(evidence.random_keep(50, 10, 7), evidence.random_keep(50, 10, 7))
    assert int(evidence.random_keep(50, 10, 7).sum()) == 10


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0}, "alpha=0 is invalid: accepted a finite number > 0"),
    ({"beta": -1.0}, "beta=-1.0 is invalid"),
    ({"method": "magic"}, "accepted one of none, occam, topk, fastv, visionzip, random"),
    ({"reference": "cls"}, "accepted 'register' or 'mean'"),
    ({"retention": 1.5}, r"accepted a number in \(0, 1\]"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens=10 is invalid"),
    ({"stage2_layer": -1}, "stage2_layer=-1 is invalid"),
    ({"stage1": False, "stage2": False}, "at least one of stage1 / stage2"),
])
def test_bad_settings_raise_value_error_naming_what_is_accepted(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OccamConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(Exception):
        OccamConfig().alpha = 2.0


def test_unsupported_model_class_raises_type_error():
    with pytest.raises(TypeError, match="accepted LlavaForConditionalGeneration, LlavaNextForConditionalGeneration"):
        occam.load(model=torch.nn.Linear(2, 2), processor=object())


def test_mean_fallback_reported_when_no_register():
    model, processor = archs.build("tiny-llava")
    vlm = occam.load(model=model, processor=processor)
    img = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    res = vlm.generate(img, "what", OccamConfig(kappa=1e6, sink_kappa=1e6), max_new_tokens=1)
    for st in res.trace.stages:
        assert st.registers == [] and st.register_source == "none" and st.reference_kind == "mean"


# -- input checks -------------------------------------------------------------------------------
def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_odd_image_modes_become_rgb():
    for img in [Image.new("RGBA", (8, 6), (255, 0, 0, 0)), Image.new("CMYK", (8, 6), (0, 255, 0, 0)),
                Image.new("I;16", (8, 6), 40000), Image.new("L", (8, 6), 7), Image.new("P", (8, 6)),
                Image.new("1", (8, 6)), Image.new("F", (8, 6), 3.5)]:
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == (8, 6)
    assert to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_animated_takes_first_frame_and_exif_rotation_is_applied():
    frames = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    img = open_image(buf.getvalue())
    assert img.getpixel((0, 0))[0] > 200 and img.getpixel((0, 0))[2] < 50
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = open_image(_png(Image.new("RGB", (6, 4)), "JPEG", exif=exif.tobytes()))
    assert rotated.size == (4, 6)


def test_bad_files_give_clear_errors():
    with pytest.raises(ValueError, match="not an image"):
        open_image(b"hello, I am a text file")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        open_image(_png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with pytest.raises(ValueError, match="too large"):
        open_image(_png(Image.new("L", (3000, 3000))), max_pixels=1_000_000)
    with pytest.raises(ValueError, match="not found"):
        open_image("/nonexistent/file.png")


def test_question_checks():
    assert check_question("  what   is it? ") == "what is it?"
    with pytest.raises(ValueError, match="empty"):
        check_question("   ")
    with pytest.raises(ValueError, match="too long"):
        check_question("why " * 1000)


def test_calibrate_reaches_the_target_average_retention():
    model, processor = archs.build("tiny-llava")
    vlm = occam.load(model=model, processor=processor)
    rng = np.random.RandomState(5)
    samples = [(Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8)), "what is it") for _ in range(3)]
    for base in (OccamConfig(stage2=False), OccamConfig(stage1=False, stage2_layer=1), OccamConfig(stage2_layer=1)):
        cfg = vlm.calibrate(samples, target=0.3, config=base, tol=0.02)
        assert (cfg.stage1, cfg.stage2) == (base.stage1, base.stage2)
        got = np.mean([vlm.generate(i, q, cfg, max_new_tokens=0).trace.counts["retention"] for i, q in samples])
        assert abs(got - 0.3) <= 0.05, (base, cfg.alpha, cfg.beta, got)
    with pytest.raises(ValueError, match="target"):
        vlm.calibrate(samples, target=0)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_calibration_predicts_retention_from_one_traced_run(name):
    """calibrate() bisects on traced scores: a stage's retention at any threshold, predicted from one run,
    equals what a run with that threshold keeps; so a calibration costs a few runs per sample."""
    from occam.calibration import retention_at as _retention_at

    model, processor = archs.build(name)
    vlm = occam.load(model=model, processor=processor)
    img = Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype(np.uint8))
    for field, stage, base in (("alpha", "stage1", OccamConfig(stage2=False)),
                               ("beta", "stage2", OccamConfig(alpha=0.8, stage2_layer=1))):
        seen = vlm.generate(img, "what is it", base, max_new_tokens=0).trace
        scores = [v for v in next(s for s in seen.stages if s.name == stage).scores if v is not None]
        got = set()
        u = np.unique(scores)   # thresholds half-way between traced scores (traces round to 6 digits)
        for t in ((u[:-1] + u[1:]) / 2)[np.linspace(0, len(u) - 2, 5).astype(int)].tolist():
            run = vlm.generate(img, "what is it", base.replace(**{field: t}), max_new_tokens=0).trace
            assert _retention_at(seen, stage, t, base) == run.counts["retention"], (field, t)
            got.add(run.counts["retention"])
        assert len(got) >= 4, got   # the thresholds really cut at different places

    calls = []
    original = vlm.generate
    vlm.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    vlm.calibrate([(img, "what is it"), (img, "what is this")], target=0.3, config=OccamConfig(stage2_layer=1))
    assert len(calls) <= 8, len(calls)   # 2 samples x 2 stages x (trace + check)
