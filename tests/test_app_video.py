"""The app's video path (app/video.py): full and pruned runs on a clip, the frame strip, the per-frame
plot, bad input that is reported while the app keeps serving, and the tab in a real browser."""
from __future__ import annotations

import numpy as np
import pytest

import occam
from app import backend
from app import video as appvideo

from .test_video import _truncated, busy_frames, write_clip

QUESTION = "what moves in the video"


@pytest.fixture(scope="module")
def cache():
    return backend.ModelCache(warmup=False)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "busy.avi", busy_frames(10), 5.0, "MJPG")


def test_video_compare_strip_and_plot(cache, clip_path):
    comp = appvideo.run_video_compare(clip_path, QUESTION, "tiny-video-llava",
                                      appvideo.video_config(alpha=1.0, beta=1.0), 3, cache=cache)
    tr = comp.pruned.trace
    assert comp.full.trace.counts["final"] == comp.full.trace.num_visual == 8 * 65
    assert tr.counts["final"] < tr.num_visual
    vlm = cache.get("tiny-video-llava")
    same = vlm.generate(comp.video, QUESTION, comp.config, max_new_tokens=3)
    assert same.text == comp.pruned.text and same.trace.kept == tr.kept
    strip = appvideo.frame_strip(comp.video, tr, thumb_height=60)
    w, h = comp.video.size
    assert strip.size[1] == 60 + 30 and strip.size[0] >= 8 * round(w * 60 / h)
    fig = appvideo.per_frame_figure(tr)
    by_name = {t.name: list(t.y) for t in fig.data}
    assert by_name["kept (final)"] == tr.counts["per_frame"]["final"]
    assert by_name["visual tokens"] == [65] * 8 and list(fig.data[0].x) == pytest.approx(tr.frame_times)
    assert "Stage I" in appvideo.video_summary_markdown(comp)


def test_strip_marks_kept_and_dropped_tokens():
    """A one-frame trace: the kept token's box is tinted green, the Stage-I-dropped one darkened."""
    frame = np.full((20, 40, 3), 128, np.uint8)
    video = occam.Video.from_frames([frame])
    trace = {"num_visual": 2, "frames": [0, 0], "frame_times": [0.0], "boxes": [[0, 0, 20, 20], [20, 0, 40, 20]],
             "kept": [True, False], "counts": {"per_frame": {"visual": [2], "after_stage1": [1], "final": [1]}},
             "stages": [{"name": "stage1", "kept": [True, False], "scores": [2.0, 0.5]}]}
    strip = np.asarray(appvideo.frame_strip(video, trace, thumb_height=20)).astype(int)
    kept, dropped = strip[30 + 10, 10], strip[30 + 10, 30]
    assert kept[1] > kept[0] and kept[1] > 128          # green tint
    assert dropped.max() < 100                           # dimmed


def test_bad_inputs_are_reported_and_the_app_keeps_serving(cache, clip_path, tmp_path):
    for bad, message in ((None, "No video"), (_truncated(tmp_path), "truncated or corrupt")):
        with pytest.raises(ValueError, match=message):
            appvideo.run_video_compare(bad, QUESTION, "tiny-video-llava", cache=cache)
    with pytest.raises(ValueError, match="takes images only; for video choose one of: .*Video-LLaVA"):
        appvideo.run_video_compare(clip_path, QUESTION, "tiny-llava", cache=cache)
    with pytest.raises(ValueError, match="question is empty"):
        appvideo.run_video_compare(clip_path, "  ", "tiny-video-llava", cache=cache)
    ok = appvideo.run_video_compare(clip_path, QUESTION, "tiny-video-llava", max_new_tokens=1, cache=cache)
    assert ok.pruned.trace.media == "video"
