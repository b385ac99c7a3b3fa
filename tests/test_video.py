"""Video: reading and sampling clips (OpenCV), bad input, and every video family on tiny models:
exactness against the unmodified model and the kept-tokens reference, per-frame boxes, per-frame
references, the trace's frame fields, and a static clip against a busy one."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import occam
from occam import archs
from occam.config import OccamConfig
from occam.evidence import relative_evidence_by_group, temporal_repeats
from occam.video import MAX_DURATION_S, Video, read_video, sample_indices

from .reference import hf_generate, reference_generate

VIDEO_FAMILIES = ["tiny-video-llava", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]
QUESTION = "what happens in the video"
W, H = 64, 48


# -- clips written by the tests --------------------------------------------------------------------------
def write_clip(path, frames, fps=8.0, fourcc="mp4v"):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc}"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def square_frame(x, y, side=16, w=W, h=H, colour=(255, 255, 255)):
    f = np.zeros((h, w, 3), dtype=np.uint8)
    f[y:y + side, x:x + side] = colour
    return f


def busy_frames(n, w=W, h=H):
    """Shapes moving across a textured background: every frame differs from the previous one everywhere."""
    rng = np.random.RandomState(1)
    out = []
    for i in range(n):
        f = (rng.rand(h, w, 3) * 120).astype(np.uint8)
        f[4:20, (5 * i) % (w - 16):(5 * i) % (w - 16) + 16] = (255, 40, 40)
        cv2.circle(f, (w - 10 - (4 * i) % (w - 20), 30), 8, (40, 255, 40), -1)
        out.append(f)
    return out


def static_frames(n):
    return [busy_frames(1)[0]] * n


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def vlm(request):
    model, processor = archs.build(request.param)
    return occam.load(model=model, processor=processor)


@pytest.fixture(scope="module")
def clip():
    return Video.from_frames(busy_frames(4), fps=4.0)


# -- reading ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fourcc,ext", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_read_video_samples_uniformly_and_keeps_timestamps(tmp_path, fourcc, ext):
    levels = [10 * i for i in range(20)]           # frame i is grey level 10 i: its index can be read back
    path = write_clip(tmp_path / f"ramp{ext}", [np.full((H, W, 3), v, np.uint8) for v in levels], 10.0, fourcc)
    video = read_video(path, num_frames=5)
    assert video.indices == (0, 4, 9, 14, 19) == tuple(sample_indices(20, 5))
    assert video.timestamps == pytest.approx((0.0, 0.4, 0.9, 1.4, 1.9))
    assert video.fps == pytest.approx(10.0) and video.duration == pytest.approx(2.0) and video.source_frames == 20
    assert video.size == (W, H) and len(video) == 5
    for i, frame in zip(video.indices, video.frames):
        assert abs(np.asarray(frame, dtype=float).mean() - levels[i]) < 4
    every = read_video(path, num_frames=50)         # more asked than there are: every frame once
    assert every.indices == tuple(range(20))
    by_rate = read_video(path, num_frames=None, fps=2.0, min_frames=1, max_frames=32, multiple=2)
    assert len(by_rate) == 4                          # 2 s at 2 frames per second


def test_read_video_keeps_scene_cut_order(tmp_path):
    frames = [np.full((H, W, 3), (200, 30, 30), np.uint8)] * 6 + [np.full((H, W, 3), (30, 30, 200), np.uint8)] * 6
    video = read_video(write_clip(tmp_path / "cut.avi", frames, 6.0, "MJPG"), num_frames=4)
    reds = [np.asarray(f)[..., 0].mean() > np.asarray(f)[..., 2].mean() for f in video.frames]
    assert reds == [True, True, False, False]


def _truncated(tmp_path):
    path = write_clip(tmp_path / "full.avi", busy_frames(20), 10.0, "MJPG")
    data = open(path, "rb").read()
    out = tmp_path / "truncated.avi"
    out.write_bytes(data[: len(data) // 2])
    return str(out)


def _bad_codec(tmp_path):
    path = write_clip(tmp_path / "ok.avi", busy_frames(4), 10.0, "MJPG")
    out = tmp_path / "codec.avi"
    out.write_bytes(open(path, "rb").read().replace(b"MJPG", b"ZQ9X").replace(b"mjpg", b"zq9x"))
    return str(out)


def _garbage(tmp_path):
    out = tmp_path / "garbage.mp4"
    out.write_bytes(np.random.RandomState(0).bytes(5000))
    return str(out)


def _cut_mp4(tmp_path):
    path = write_clip(tmp_path / "whole.mp4", busy_frames(10), 10.0, "mp4v")
    out = tmp_path / "cut.mp4"
    out.write_bytes(open(path, "rb").read()[:-200])    # the index (moov) is at the end: lost
    return str(out)


def _empty(tmp_path):
    out = tmp_path / "empty.mp4"
    out.write_bytes(b"")
    return str(out)


def _too_long(tmp_path):
    n = int(MAX_DURATION_S) + 30                   # 630 tiny frames at 1 fps: over the 600 s limit
    return write_clip(tmp_path / "long.avi", [np.zeros((8, 8, 3), np.uint8)] * n, 1.0, "MJPG")


def _too_large(tmp_path):
    return write_clip(tmp_path / "huge.avi", [np.zeros((2400, 4000, 3), np.uint8)], 1.0, "MJPG")


@pytest.mark.parametrize("make,message", [
    (_truncated, r"truncated or corrupt: only \d+ of the 20 frames"),
    (_bad_codec, r"Unsupported video codec 'ZQ9X'"),
    (_garbage, r"not a video file OpenCV can read"),
    (_cut_mp4, r"No frame of cut.mp4 could be decoded: the file is corrupt or truncated"),
    (_empty, r"is empty \(0 bytes\)"),
    (_too_long, r"too long: 630.0 s, the limit is 600 s"),
    (_too_large, r"frames too large: 4000x2400"),
    (lambda tmp_path: str(tmp_path / "missing.mp4"), r"Video file not found"),
], ids=["truncated", "codec", "not-a-video", "mp4-without-index", "empty-file", "too-long", "too-large", "missing"])
def test_bad_video_files_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        read_video(make(tmp_path))


def test_bad_frame_lists_raise_clear_errors():
    with pytest.raises(ValueError, match="zero frames"):
        Video.from_frames([])
    with pytest.raises(ValueError, match="one size"):
        Video.from_frames([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        Video.from_frames([np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="non-decreasing"):
        Video.from_frames([np.zeros((8, 8, 3), np.uint8)] * 2, timestamps=[1.0, 0.5])


def test_generate_recognises_video_inputs_and_image_models_refuse_them(tmp_path):
    model, processor = archs.build("tiny-video-llava")
    vlm = occam.load(model=model, processor=processor)
    frames = busy_frames(12)
    path = write_clip(tmp_path / "clip.avi", frames, 6.0, "MJPG")
    cfg = OccamConfig(method="none")
    from_path = vlm.generate(path, QUESTION, cfg, max_new_tokens=2).trace
    assert from_path.media == "video" and len(from_path.frame_times) == 8    # Video-LLaVA samples 8 frames
    assert from_path.frame_times == pytest.approx([i / 6.0 for i in sample_indices(12, 8)], abs=1e-5)
    from_list = vlm.generate([Image.fromarray(f) for f in frames[:3]], QUESTION, cfg, max_new_tokens=1).trace
    from_array = vlm.generate(np.stack(frames[:3]), QUESTION, cfg, max_new_tokens=1).trace
    assert from_list.counts["per_frame"]["visual"] == from_array.counts["per_frame"]["visual"] == [65] * 3
    assert vlm.generate(Image.fromarray(frames[0]), QUESTION, cfg, max_new_tokens=1).trace.media == "image"
    with pytest.raises(ValueError, match="corrupt"):
        vlm.generate(_cut_mp4(tmp_path), QUESTION, cfg)
    image_only = occam.load(model=archs.build("tiny-llava")[0], processor=archs.build("tiny-llava")[1])
    with pytest.raises(ValueError, match=r"takes images only; video input needs one of: .*Video-LLaVA"):
        image_only.generate(path, QUESTION, cfg)


# -- the method on video, every video family ---------------------------------------------------------
@pytest.mark.parametrize("cfg", [OccamConfig(method="none"), OccamConfig(alpha=1e-9, beta=1e-9)],
                         ids=["none", "occam-keep-all"])
def test_video_unpruned_equals_unmodified_model(vlm, clip, cfg):
    tokens, logits = hf_generate(vlm, clip, QUESTION, 5)
    res = vlm.generate(clip, QUESTION, cfg, max_new_tokens=5)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)
    assert res.trace.counts["final"] == res.trace.num_visual


def test_video_stage1_equals_model_fed_only_kept_tokens(vlm, clip):
    res = vlm.generate(clip, QUESTION, OccamConfig(method="topk", retention=0.4, stage2=False), max_new_tokens=4)
    keep1 = torch.tensor(res.trace.stage("stage1").kept)
    assert 0 < int(keep1.sum()) < keep1.numel()
    tokens, logits = reference_generate(vlm, clip, QUESTION, keep1, steps=4)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)


def test_video_stage2_equals_split_reference(vlm, clip):
    res = vlm.generate(clip, QUESTION, OccamConfig(alpha=1.0, beta=1.0, stage2_layer=2), max_new_tokens=4)
    keep1, keep2 = torch.tensor(res.trace.stage("stage1").kept), torch.tensor(res.trace.kept)
    assert int(keep2.sum()) < int(keep1.sum()) < keep1.numel()
    tokens, logits = reference_generate(vlm, clip, QUESTION, keep1, keep2, layer_k=2, steps=4)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)


def test_video_trace_has_frames_timestamps_and_per_frame_counts(vlm, clip):
    res = vlm.generate(clip, QUESTION, OccamConfig(alpha=0.9, beta=1.0), max_new_tokens=2)
    d = json.loads(res.trace.to_json())
    n = d["num_visual"]
    assert d["media"] == "video" and len(d["frames"]) == len(d["timestamps"]) == len(d["boxes"]) == n
    n_frames = len(d["frame_times"])
    assert sorted(set(d["frames"])) == list(range(n_frames))
    assert d["frames"] == sorted(d["frames"])                     # frames reach the LM in time order
    for f, t in zip(d["frames"], d["timestamps"]):
        assert t == d["frame_times"][f]
    if vlm.family == "video_llava":
        assert d["frame_times"] == pytest.approx(list(clip.timestamps), abs=1e-5)
    else:   # Qwen: a temporal patch merges 2 frames; its time is the mean of theirs (Qwen3-VL's prompt stamps)
        ts = clip.timestamps
        assert d["frame_times"] == pytest.approx([(ts[i] + ts[i + 1]) / 2 for i in range(0, len(ts), 2)])
    per = d["counts"]["per_frame"]
    for key, total in (("visual", n), ("after_stage1", d["counts"]["after_stage1"]),
                       ("after_stage2", d["counts"]["after_stage2"]), ("final", d["counts"]["final"])):
        assert len(per[key]) == n_frames and sum(per[key]) == total
    st1 = res.trace.stage("stage1")
    assert len(st1.frame_references) == len(st1.frame_reference_kinds) == n_frames
    assert [k for k in d["kinds"] if k == "patch"] and all(
        (b is None) == (k != "patch") for b, k in zip(d["boxes"], d["kinds"]))


def test_video_boxes_follow_the_moving_square(vlm):
    xs = [4, 4, 36, 36]          # Qwen pairs frames (0, 1) and (2, 3) into one temporal patch each
    video = Video.from_frames([square_frame(x, 16) for x in xs], fps=1.0)
    res = vlm.generate(video, QUESTION, OccamConfig(method="none"), max_new_tokens=1)
    tr = res.trace
    prep = vlm.adapter.prepare(video, QUESTION)
    pv = prep.inputs["pixel_values_videos"].float()
    if vlm.family.startswith("qwen"):
        unit = vlm.adapter.merge ** 2
        bright = pv.view(tr.num_visual, unit, -1).mean(dim=(1, 2)).numpy()
    else:
        frames, g = pv[0], vlm.adapter.grid
        cell = frames.shape[-1] // g
        bright = np.array([frames[f, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].mean().item()
                           if k == "patch" else np.nan for (f, r, c), k in zip(tr.grid, tr.kinds)])
    lo, hi = np.nanmin(bright), np.nanmax(bright)
    checked = 0
    for j, box in enumerate(tr.boxes):
        if box is None:
            continue
        frame = tr.frames[j]
        x0 = xs[frame * (2 if vlm.family.startswith("qwen") else 1)]
        sq = (x0, 16, x0 + 16, 32)
        overlap = max(0, min(box[2], sq[2]) - max(box[0], sq[0])) * max(0, min(box[3], sq[3]) - max(box[1], sq[1]))
        if bright[j] > (lo + hi) / 2:
            assert overlap > 0, f"frame {frame}: bright token at {box} misses the square at {sq}"
        if overlap == 0:
            assert bright[j] <= lo + 0.05 * (hi - lo) + 1e-6, f"frame {frame}: token at {box} off the square is bright"
        checked += 1
    assert checked >= tr.num_visual * 0.5


def test_each_frame_is_scored_against_its_own_registers():
    evidence = torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0, 40.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    registers = torch.tensor([True, False, False, True, False, False])
    cand = ~registers
    sc, per = relative_evidence_by_group(evidence, cand, registers, groups)
    assert sc.scores.tolist() == [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]          # each frame / its own register
    assert [p.reference for p in per] == [1.0, 10.0] and sc.reference_kind == "register"
    no_reg = torch.tensor([True, False, False, False, False, False])   # frame 1 has none: its mean, said so
    sc, per = relative_evidence_by_group(evidence, ~no_reg, no_reg, groups)
    assert [p.reference_kind for p in per] == ["register", "mean"] and sc.reference_kind == "register+mean"
    assert sc.scores[3:].tolist() == pytest.approx([30 / 70, 60 / 70, 120 / 70])   # / mean(10, 20, 40)


def test_temporal_repeats_compare_the_same_place_in_the_previous_frame():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    grid = [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1], [2, 0, 0], [2, 0, 1]]
    assert temporal_repeats(keys, grid, 0.99).tolist() == [False, False, True, False, True, False]


def test_concurrent_video_and_image_calls_match_serial(vlm, clip):
    image = Image.fromarray(busy_frames(1)[0])
    jobs = [(clip, OccamConfig(method="none")), (clip, OccamConfig(alpha=1.0, beta=1.0, stage2_layer=1)),
            (image, OccamConfig(alpha=0.9, beta=1.1)), (clip, OccamConfig(method="visionzip", retention=0.3)),
            (clip, OccamConfig(alpha=1.0, stage2=False, temporal_similarity=0.9))]
    serial = [vlm.generate(x, QUESTION, c, max_new_tokens=2) for x, c in jobs]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda job: vlm.generate(job[0], QUESTION, job[1], max_new_tokens=2), jobs * 2))
    for i, res in enumerate(parallel):
        ref = serial[i % len(jobs)]
        assert res.token_ids == ref.token_ids and res.trace.kept == ref.trace.kept
        torch.testing.assert_close(res.logits, ref.logits)


def test_saved_video_llava_folder_loads_and_answers_the_same(tmp_path, clip):
    model, processor = archs.build("tiny-video-llava")
    model.save_pretrained(tmp_path / "vl")
    processor.save_pretrained(tmp_path / "vl")
    loaded = occam.load(str(tmp_path / "vl"))
    assert loaded.family == "video_llava" and loaded.takes_video
    cfg = OccamConfig(alpha=1.0, beta=1.0)
    a = loaded.generate(clip, QUESTION, cfg, max_new_tokens=3)
    b = occam.load(model=model, processor=processor).generate(clip, QUESTION, cfg, max_new_tokens=3)
    assert a.token_ids == b.token_ids and a.trace.kept == b.trace.kept


@pytest.mark.parametrize("name", ["tiny-video-llava", "tiny-qwen2.5-vl"])
def test_static_clip_keeps_fewer_tokens_per_frame_after_the_first_than_a_busy_one(name):
    model, processor = archs.build(name)
    vlm = occam.load(model=model, processor=processor)
    n = 8
    static, busy = Video.from_frames(static_frames(n), fps=4.0), Video.from_frames(busy_frames(n), fps=4.0)
    per_frame = lambda video, cfg: vlm.generate(video, QUESTION, cfg, max_new_tokens=1).trace.counts[
        "per_frame"]["after_stage1"]
    plain = OccamConfig(alpha=1.0, stage2=False)
    # the paper's per-frame Stage I sees each frame alone: identical frames keep identical counts
    still = per_frame(static, plain)
    assert len(set(still)) == 1 and still[0] > 0
    # with repeats of the previous frame dropped (temporal_similarity), a static clip keeps its first frame only
    dedup = plain.replace(temporal_similarity=0.99)
    s, b = per_frame(static, dedup), per_frame(busy, dedup)
    assert s[0] == still[0] and all(k == 0 for k in s[1:])
    assert all(bk > 0 for bk in b[1:]) and sum(s[1:]) < sum(b[1:])


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_qwen_video_patches_follow_the_transformers_video_layout(name):
    """Our torchvision-free pixel_values_videos equal transformers' Qwen video patchify (its reshape /
    permute, written out here) on frames that need no resizing (64 x 48 is a multiple of patch x merge)."""
    _, processor = archs.build(name)
    ip = processor.image_processor
    frames = busy_frames(4)
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    out = processor(videos=[[Image.fromarray(f) for f in frames]], text=[prompt], return_tensors="pt",
                    video_timestamps=[[0.0, 0.5, 1.0, 1.5]])
    x = (np.stack(frames).astype(np.float64) / 255.0 - np.array(ip.image_mean)) / np.array(ip.image_std)
    x = x.transpose(0, 3, 1, 2)                                   # (T, C, H, W)
    t, c, h, w = x.shape
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    x = x.reshape(t // tp, tp, c, h // (p * m), m, p, w // (p * m), m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(-1, c * tp * p * p)   # transformers' video patchify
    np.testing.assert_allclose(out["pixel_values_videos"].numpy(), x, atol=1e-5)
    assert out["video_grid_thw"].tolist() == [[t // tp, h // p, w // p]]
    ids = out["input_ids"][0]
    n_tokens = (t // tp) * (h // p) * (w // p) // m**2
    assert int((ids == processor.video_token_id).sum()) == n_tokens
    assert torch.equal(out["mm_token_type_ids"][0], (ids == processor.video_token_id).long() * 2)
    text = processor.tokenizer.decode(ids)
    if name == "tiny-qwen3-vl":   # a time stamp and its own vision block per temporal patch, as transformers 5.24
        assert "<0.2 seconds><|vision_start|>" in text and "<1.2 seconds><|vision_start|>" in text
    else:
        assert out["second_per_grid_ts"].tolist() == pytest.approx([tp / 2.0])   # 2 frames per second sampled
