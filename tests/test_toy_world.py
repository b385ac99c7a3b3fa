"""The synthetic shapes world: determinism, correctness by construction, split disjointness."""

import hashlib
import re
from collections import Counter

import numpy as np
import pytest

from occam.toy import world as W

N_CHECK = 400  # samples per question type for the correctness checks


def _samples(qtype, n=N_CHECK, seed=3):
    return [W.make_sample(W.sample_seed("train", seed, i), qtype=qtype) for i in range(n)]


@pytest.fixture(scope="module")
def by_type():
    return {q: _samples(q) for q in W.QTYPES}


def _find(scene, shape=None, color=None):
    return [o for o in scene.objects if (shape is None or o.shape == shape) and (color is None or o.color == color)]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_sample():
    for seed in [0, 1, 12345, W.sample_seed("heldout", 0, 17)]:
        a, b = W.make_sample(seed), W.make_sample(seed)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.question, a.answer, a.qtype) == (b.question, b.answer, b.qtype)
        assert a.scene.to_dict() == b.scene.to_dict()
    for q in W.QTYPES:
        a, b = W.make_sample(99, qtype=q), W.make_sample(99, qtype=q)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.question == b.question


def test_dataset_deterministic_and_varied():
    d1 = W.dataset("train", 30, seed=5)
    d2 = W.dataset("train", 30, seed=5)
    assert [(s.question, s.answer) for s in d1] == [(s.question, s.answer) for s in d2]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(d1, d2))
    d3 = W.dataset("train", 30, seed=6)
    assert [s.question for s in d1] != [s.question for s in d3]
    assert len({hashlib.md5(s.image.tobytes()).hexdigest() for s in d1}) == 30


def test_no_global_rng_dependence():
    np.random.seed(0)
    a = W.make_sample(7)
    np.random.seed(1)
    _ = np.random.rand(10)
    b = W.make_sample(7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.question == b.question


# --------------------------------------------------------------------------- splits


def test_train_heldout_disjoint():
    tr = {W.sample_seed("train", s, i) for s in range(3) for i in range(500)}
    he = {W.sample_seed("heldout", s, i) for s in range(3) for i in range(500)}
    assert not tr & he
    assert all(W.split_of_seed(x) == "train" for x in tr) and all(W.split_of_seed(x) == "heldout" for x in he)
    # the extremes of the seed spaces do not collide either
    assert W.sample_seed("train", (1 << 24) - 1, (1 << 24) - 1) < W.sample_seed("heldout", 0, 0)
    with pytest.raises(ValueError):
        W.sample_seed("train", 0, 1 << 24)
    img_tr = {hashlib.md5(s.image.tobytes()).hexdigest() for s in W.dataset("train", 200, 0)}
    img_he = {hashlib.md5(s.image.tobytes()).hexdigest() for s in W.dataset("heldout", 200, 0)}
    assert not img_tr & img_he


# --------------------------------------------------------------------------- scenes and rendering


def test_scene_geometry_and_pixels(by_type):
    seen_bg, seen_n = Counter(), Counter()
    for samples in by_type.values():
        for s in samples[:150]:
            sc = s.scene
            seen_bg[sc.background] += 1
            seen_n[len(sc.objects)] += 1
            assert W.MIN_OBJECTS <= len(sc.objects) <= W.MAX_OBJECTS
            img = np.asarray(s.image)
            assert img.shape == (sc.size, sc.size, 3) and img.dtype == np.uint8 and s.image.mode == "RGB"
            bg = W._background_array(sc).astype(int)
            for k, o in enumerate(sc.objects):
                x0, y0, x1, y1 = o.bbox
                assert 0 <= x0 and 0 <= y0 and x1 < sc.size and y1 < sc.size
                # no overlap (boxes are disjoint)
                for o2 in sc.objects[k + 1 :]:
                    a, b = o.bbox, o2.bbox
                    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (o, o2)
                # the centre pixel has exactly the object's colour
                x, y = o.center
                assert tuple(img[y, x]) == o.rgb, (o, tuple(img[y, x]))
                # and is clearly different from the background underneath it
                assert np.abs(bg[y, x] - np.array(o.rgb)).max() >= 60
                # the colour dominates the box (shape drawn where the scene says)
                box = img[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3)
                frac = np.all(box == np.array(o.rgb, dtype=np.uint8), axis=1).mean()
                lo = {"square": 0.95, "circle": 0.6, "triangle": 0.35}[o.shape]
                assert frac >= lo, (o, frac)
            cx = sc.complexity
            assert cx["n_objects"] == len(sc.objects) and cx["background"] == sc.background
            assert 0 < cx["object_area_frac"] < 1
    assert set(seen_bg) == set(W.BACKGROUNDS)
    assert set(seen_n) == set(range(1, 7))


def test_backgrounds_far_from_object_colours():
    # background pixels are low-saturation: every object colour is far from every background pixel
    cols = np.array(list(W.COLORS.values()), dtype=int)
    for i in range(80):
        sc = W.make_scene(np.random.default_rng(1000 + i), background=W.BACKGROUNDS[i % 4])
        bg = W._background_array(sc).reshape(-1, 1, 3).astype(int)
        assert np.abs(bg - cols[None]).max(-1).min() >= 50


def test_render_upscale_consistent():
    s = W.make_sample(5)
    big = np.asarray(W.render(s.scene, size=4 * s.scene.size))
    for o in s.scene.objects:
        x, y = o.center
        assert tuple(big[4 * y + 1, 4 * x + 1]) == o.rgb


# --------------------------------------------------------------------------- answers by construction


def test_color_answers(by_type):
    for s in by_type["color"]:
        m = re.fullmatch(r"what color is the (\w+)\?", s.question)
        assert m, s.question
        objs = _find(s.scene, shape=m.group(1))
        assert len(objs) == 1  # only asked when unambiguous
        assert s.answer == objs[0].color
        x, y = objs[0].center
        assert tuple(np.asarray(s.image)[y, x]) == W.COLORS[s.answer]
    assert set(s.answer for s in by_type["color"]) == set(W.COLOR_NAMES)


def test_shape_answers(by_type):
    for s in by_type["shape"]:
        m = re.fullmatch(r"what shape is the (\w+) object\?", s.question)
        assert m, s.question
        objs = _find(s.scene, color=m.group(1))
        assert len(objs) == 1
        assert s.answer == objs[0].shape
    assert set(s.answer for s in by_type["shape"]) == set(W.SHAPES)


def test_count_answers(by_type):
    plural_to_shape = {v: k for k, v in W.PLURALS.items()}
    for s in by_type["count"]:
        m = re.fullmatch(r"how many (\w+) are there\?", s.question)
        assert m, s.question
        n = sum(1 for o in s.scene.objects if o.shape == plural_to_shape[m.group(1)])
        assert s.answer == ["zero", "one", "two", "three", "four", "five", "six"][n]
    assert {"zero", "one", "two", "three", "four"} <= {s.answer for s in by_type["count"]}


def test_exist_answers_and_balance(by_type):
    for s in by_type["exist"]:
        m = re.fullmatch(r"is there an? (\w+) (\w+)\?", s.question)
        assert m, s.question
        present = bool(_find(s.scene, shape=m.group(2), color=m.group(1)))
        assert s.answer == ("yes" if present else "no")
    frac = np.mean([s.answer == "yes" for s in by_type["exist"]])
    assert 0.4 <= frac <= 0.6


def test_position_answers_and_balance(by_type):
    for s in by_type["position"]:
        m = re.fullmatch(r"is the (\w+) (\w+) (left of|above) the (\w+) (\w+)\?", s.question)
        assert m, s.question
        a = _find(s.scene, color=m.group(1), shape=m.group(2))
        b = _find(s.scene, color=m.group(4), shape=m.group(5))
        assert len(a) == 1 and len(b) == 1 and a[0] is not b[0]  # referents unambiguous
        ax = 0 if m.group(3) == "left of" else 1
        d = b[0].center[ax] - a[0].center[ax]
        assert abs(d) >= W.POSITION_MARGIN  # never a near tie
        assert s.answer == ("yes" if d > 0 else "no")
    frac = np.mean([s.answer == "yes" for s in by_type["position"]])
    assert 0.4 <= frac <= 0.6
    assert {"left of", "above"} == {re.search("left of|above", s.question).group(0) for s in by_type["position"]}


def test_vocabulary_covers_everything(by_type):
    vocab = set(W.vocabulary())
    for samples in by_type.values():
        for s in samples:
            words = re.findall(r"\w+|[^\w\s]", s.question) + [s.answer]
            assert set(words) <= vocab, words
            assert re.fullmatch(r"[a-z]+", s.answer)


def test_mixed_qtypes():
    qt = Counter(s.qtype for s in W.dataset("heldout", 200, seed=2))
    assert set(qt) == set(W.QTYPES)
    with pytest.raises(ValueError):
        W.make_sample(0, qtype="nonsense")
