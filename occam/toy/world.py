"""A tiny synthetic "shapes world" for training and benchmarking a toy VLM.

Everything is deterministic given a seed (numpy ``Generator`` only, no global RNG).

A :class:`Scene` holds 1-6 non-overlapping objects (shape x colour x size) on a
background whose kind controls how much of the image is redundant:

* ``plain``    -- one flat muted colour (very redundant)
* ``gradient`` -- a smooth linear gradient between two muted colours
* ``noise``    -- a muted colour plus per-pixel Gaussian noise
* ``texture``  -- stripes or a checkerboard in two muted colours

Object colours are fully saturated, backgrounds are low-saturation and kept away
from the object colours, so objects are always clearly distinguishable.

Question types (answers are always single lower-case words, numbers as words):

* ``color``    "what color is the circle?"             (only if exactly one circle)
* ``count``    "how many squares are there?"           -> zero .. six
* ``exist``    "is there a red triangle?"              -> yes / no (balanced)
* ``position`` "is the red circle left of the blue square?" / "... above ..." -> yes / no (balanced)
* ``shape``    "what shape is the green object?"       (only if exactly one green object)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- constants

IMAGE_SIZE = 96  # native canvas size (pixels); scene coordinates live in this space

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLORS = {
    "red": (220, 30, 30),
    "green": (20, 190, 30),
    "blue": (35, 70, 235),
    "yellow": (245, 225, 25),
    "purple": (150, 40, 200),
    "orange": (250, 135, 10),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 7, "large": 12}  # half-extent (radius) in pixels
BACKGROUNDS = ("plain", "gradient", "noise", "texture")
QTYPES = ("color", "count", "exist", "position", "shape")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS = ("left of", "above")

MIN_OBJECTS, MAX_OBJECTS = 1, 6
GAP = 3  # minimum free pixels between object bounding boxes
BORDER = 2  # minimum distance of a bbox from the image border
POSITION_MARGIN = 6  # minimum centre offset (pixels) along the asked axis for position questions

# Seed spaces: train sample seeds live in [0, 2**48), held-out ones in [2**48, 2**49).
_SPLIT_BASE = {"train": 0, "heldout": 1 << 48}
_INDEX_BITS = 24  # up to 16.7M samples per dataset call


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    center: tuple[int, int]  # (x, y) in pixels of the IMAGE_SIZE canvas

    @property
    def radius(self) -> int:
        return SIZES[self.size]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box (x0, y0, x1, y1)."""
        x, y = self.center
        r = self.radius
        return (x - r, y - r, x + r, y + r)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]


@dataclass
class Scene:
    objects: list[Obj]
    background: str  # one of BACKGROUNDS
    bg_params: dict = field(default_factory=dict)
    size: int = IMAGE_SIZE

    @property
    def complexity(self) -> dict:
        """Descriptors for benchmarks: how busy / how redundant the image is."""
        area = 0
        for o in self.objects:
            d = 2 * o.radius + 1
            area += {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[o.shape] * d * d
        return {
            "n_objects": len(self.objects),
            "background": self.background,
            "object_area_frac": round(float(area) / (self.size * self.size), 4),
        }

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (shape is None or o.shape == shape) and (color is None or o.color == color)
        )

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "bg_params": self.bg_params,
            "size": self.size,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "center": list(o.center), "bbox": list(o.bbox)}
                for o in self.objects
            ],
        }


@dataclass
class Sample:
    image: Image.Image
    question: str
    answer: str
    qtype: str
    scene: Scene
    seed: int | None = None


# --------------------------------------------------------------------------- rng helpers


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(int(seed_or_rng))


def sample_seed(split: str, seed: int, index: int) -> int:
    """Integer seed of sample ``index`` of ``dataset(split, n, seed)``; split seed spaces are disjoint."""
    if split not in _SPLIT_BASE:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not (0 <= index < (1 << _INDEX_BITS)) or not (0 <= seed < (1 << (48 - _INDEX_BITS))):
        raise ValueError("seed/index out of range")
    return _SPLIT_BASE[split] + (seed << _INDEX_BITS) + index


def split_of_seed(sample_seed_value: int) -> str:
    return "heldout" if sample_seed_value >= _SPLIT_BASE["heldout"] else "train"


# --------------------------------------------------------------------------- scene sampling


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour: grey level with a small tint."""
    level = rng.uniform(70, 200)
    tint = rng.uniform(-12, 12, size=3)
    return np.clip(level + tint, 0, 255)


def _sample_background(rng: np.random.Generator, kind: str | None = None) -> tuple[str, dict]:
    kind = kind or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    p: dict = {"base": [round(float(v), 2) for v in _muted_color(rng)]}
    if kind == "gradient":
        p["other"] = [round(float(v), 2) for v in _muted_color(rng)]
        p["angle"] = round(float(rng.uniform(0, 2 * np.pi)), 4)
    elif kind == "noise":
        p["sigma"] = round(float(rng.uniform(6, 15)), 2)
        p["noise_seed"] = int(rng.integers(1 << 31))
    elif kind == "texture":
        p["pattern"] = ["hstripes", "vstripes", "dstripes", "checker"][rng.integers(4)]
        p["period"] = int(rng.integers(4, 13))
        shift = rng.uniform(25, 45) * (1 if rng.random() < 0.5 else -1)
        p["other"] = [round(float(v), 2) for v in np.clip(np.asarray(p["base"]) + shift, 40, 225)]
    elif kind != "plain":
        raise ValueError(kind)
    return kind, p


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]], size: int) -> list[Obj] | None:
    """Rejection-sample centres for objects so that their boxes do not overlap."""
    placed: list[Obj] = []
    # place large ones first: easier packing
    order = sorted(range(len(specs)), key=lambda i: -SIZES[specs[i][2]])
    result: dict[int, Obj] = {}
    for i in order:
        shape, color, sz = specs[i]
        r = SIZES[sz]
        for _ in range(200):
            x = int(rng.integers(BORDER + r, size - BORDER - r))
            y = int(rng.integers(BORDER + r, size - BORDER - r))
            ok = True
            for o in placed:
                if abs(x - o.center[0]) <= r + o.radius + GAP and abs(y - o.center[1]) <= r + o.radius + GAP:
                    ok = False
                    break
            if ok:
                obj = Obj(shape, color, sz, (x, y))
                placed.append(obj)
                result[i] = obj
                break
        else:
            return None
    return [result[i] for i in range(len(specs))]


def random_spec(rng: np.random.Generator, shape: str | None = None, color: str | None = None) -> tuple[str, str, str]:
    return (
        shape or SHAPES[rng.integers(len(SHAPES))],
        color or COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
        tuple(SIZES)[rng.integers(len(SIZES))],
    )


def make_scene(
    seed_or_rng,
    n_objects: int | None = None,
    specs: list[tuple[str, str, str]] | None = None,
    background: str | None = None,
    size: int = IMAGE_SIZE,
) -> Scene:
    """Random scene. ``specs`` (shape, colour, size) fixes the objects; otherwise ``n_objects`` random ones."""
    rng = _rng(seed_or_rng)
    if specs is None:
        n = int(n_objects if n_objects is not None else rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        specs = [random_spec(rng) for _ in range(n)]
    specs = list(specs)
    rng.shuffle(specs)
    objects = None
    while objects is None:
        objects = _place(rng, specs, size)
        if objects is None:  # extremely rare: shrink one large object and retry
            j = next((k for k, s in enumerate(specs) if s[2] == "large"), None)
            if j is None:
                raise RuntimeError("cannot place objects")
            specs[j] = (specs[j][0], specs[j][1], "small")
    kind, params = _sample_background(rng, background)
    return Scene(objects=objects, background=kind, bg_params=params, size=size)


# --------------------------------------------------------------------------- rendering


def _background_array(scene: Scene) -> np.ndarray:
    s = scene.size
    p = scene.bg_params
    base = np.asarray(p["base"], dtype=np.float32)
    kind = scene.background
    if kind == "plain":
        arr = np.broadcast_to(base, (s, s, 3)).astype(np.float32)
    elif kind == "gradient":
        other = np.asarray(p["other"], dtype=np.float32)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
        a = p["angle"]
        t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) / np.sqrt(2) + 0.5
        arr = base + (other - base) * t[..., None]
    elif kind == "noise":
        g = np.random.default_rng(p["noise_seed"])
        arr = base + g.normal(0.0, p["sigma"], size=(s, s, 1)).astype(np.float32) + g.normal(
            0.0, p["sigma"] / 3, size=(s, s, 3)
        ).astype(np.float32)
    elif kind == "texture":
        other = np.asarray(p["other"], dtype=np.float32)
        yy, xx = np.mgrid[0:s, 0:s]
        per = p["period"]
        pat = p["pattern"]
        if pat == "hstripes":
            m = (yy // per) % 2
        elif pat == "vstripes":
            m = (xx // per) % 2
        elif pat == "dstripes":
            m = ((xx + yy) // per) % 2
        else:
            m = (xx // per + yy // per) % 2
        arr = np.where(m[..., None] == 1, other, base)
    else:
        raise ValueError(kind)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_obj(draw: ImageDraw.ImageDraw, o: Obj, scale: float = 1.0) -> None:
    x, y = o.center
    r = o.radius
    box = [(x - r) * scale, (y - r) * scale, (x + r + 1) * scale - 1, (y + r + 1) * scale - 1]
    if o.shape == "circle":
        draw.ellipse(box, fill=o.rgb)
    elif o.shape == "square":
        draw.rectangle(box, fill=o.rgb)
    elif o.shape == "triangle":
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=o.rgb)
    else:
        raise ValueError(o.shape)


def render(scene: Scene, size: int | None = None) -> Image.Image:
    """Render to an RGB PIL image (``scene.size`` pixels square, or upscaled to ``size``)."""
    img = Image.fromarray(_background_array(scene), "RGB")
    if size is not None and size != scene.size:
        img = img.resize((size, size), Image.NEAREST)
    scale = 1.0 if size is None else size / scene.size
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_obj(draw, o, scale)
    return img


# --------------------------------------------------------------------------- questions


def ask_color(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    uniq = [s for s in SHAPES if scene.count(shape=s) == 1]
    if not uniq:
        return None
    shape = uniq[rng.integers(len(uniq))]
    obj = next(o for o in scene.objects if o.shape == shape)
    return f"what color is the {shape}?", obj.color


def ask_shape(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    uniq = [c for c in COLOR_NAMES if scene.count(color=c) == 1]
    if not uniq:
        return None
    color = uniq[rng.integers(len(uniq))]
    obj = next(o for o in scene.objects if o.color == color)
    return f"what shape is the {color} object?", obj.shape


def ask_count(scene: Scene, rng: np.random.Generator, shape: str | None = None) -> tuple[str, str]:
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    return f"how many {PLURALS[shape]} are there?", NUMBER_WORDS[scene.count(shape=shape)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def ask_exist(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        o = scene.objects[rng.integers(len(scene.objects))]
        return f"is there {_article(o.color)} {o.color} {o.shape}?", "yes"
    present = {(o.shape, o.color) for o in scene.objects}
    absent = [(s, c) for s in SHAPES for c in COLOR_NAMES if (s, c) not in present]
    # prefer hard negatives: the colour or the shape occurs in the scene
    shapes_in = {o.shape for o in scene.objects}
    colors_in = {o.color for o in scene.objects}
    hard = [(s, c) for (s, c) in absent if s in shapes_in or c in colors_in]
    pool = hard if (hard and rng.random() < 0.75) else absent
    s, c = pool[rng.integers(len(pool))]
    return f"is there {_article(c)} {c} {s}?", "no"


def ask_position(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    uniq = [o for o in scene.objects if scene.count(shape=o.shape, color=o.color) == 1]
    rel = RELATIONS[rng.integers(len(RELATIONS))]
    axis = 0 if rel == "left of" else 1
    pairs = [
        (a, b) for a in uniq for b in uniq if a is not b and abs(a.center[axis] - b.center[axis]) >= POSITION_MARGIN
    ]
    if not pairs:
        return None
    want_yes = rng.random() < 0.5
    pairs = [(a, b) for (a, b) in pairs if (a.center[axis] < b.center[axis]) == want_yes]
    a, b = pairs[rng.integers(len(pairs))]
    return f"is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?", "yes" if want_yes else "no"


_ASK = {"color": ask_color, "count": ask_count, "exist": ask_exist, "position": ask_position, "shape": ask_shape}


def ask(scene: Scene, rng: np.random.Generator, qtype: str) -> tuple[str, str] | None:
    """A question of type ``qtype`` about an existing scene, or None if none is well-posed."""
    return _ASK[qtype](scene, rng)


def _q_until(rng, scene_kw, qtype, min_objects=1):
    while True:
        kw = dict(scene_kw)
        if kw.get("n_objects") is None and min_objects > 1:
            kw["n_objects"] = int(rng.integers(min_objects, MAX_OBJECTS + 1))
        scene = make_scene(rng, **kw)
        qa = ask(scene, rng, qtype)
        if qa is not None:
            return scene, qa[0], qa[1]


def _q_color(rng, scene_kw):
    return _q_until(rng, scene_kw, "color")


def _q_shape(rng, scene_kw):
    return _q_until(rng, scene_kw, "shape")


def _q_exist(rng, scene_kw):
    return _q_until(rng, scene_kw, "exist")


def _q_position(rng, scene_kw):
    return _q_until(rng, scene_kw, "position", min_objects=2)


def _q_count(rng, scene_kw):
    """Count questions condition the scene on the answer so that answers are spread over zero..six."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    n = int(scene_kw.get("n_objects") or rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    k = int(rng.integers(0, n + 1))  # how many of the asked shape
    others = [s for s in SHAPES if s != shape]
    specs = [random_spec(rng, shape=shape) for _ in range(k)]
    specs += [random_spec(rng, shape=others[rng.integers(len(others))]) for _ in range(n - k)]
    scene = make_scene(rng, specs=specs, background=scene_kw.get("background"))
    q, a = ask_count(scene, rng, shape)
    assert a == NUMBER_WORDS[k]
    return scene, q, a


_QGEN = {"color": _q_color, "count": _q_count, "exist": _q_exist, "position": _q_position, "shape": _q_shape}


def make_sample(
    seed_or_rng,
    qtype: str | None = None,
    n_objects: int | None = None,
    background: str | None = None,
) -> Sample:
    """One (image, question, answer) sample. ``qtype`` None -> uniform over QTYPES."""
    seed = None if isinstance(seed_or_rng, np.random.Generator) else int(seed_or_rng)
    rng = _rng(seed_or_rng)
    if qtype is None:
        qtype = QTYPES[rng.integers(len(QTYPES))]
    if qtype not in _QGEN:
        raise ValueError(f"unknown qtype {qtype!r}")
    if qtype == "position" and n_objects is not None and n_objects < 2:
        raise ValueError("position questions need at least 2 objects")
    scene, question, answer = _QGEN[qtype](rng, {"n_objects": n_objects, "background": background})
    return Sample(image=render(scene), question=question, answer=answer, qtype=qtype, scene=scene, seed=seed)


def dataset(split: str, n: int, seed: int = 0, qtype: str | None = None) -> list[Sample]:
    """``n`` samples of ``split`` ('train' | 'heldout'); the two splits use disjoint seed spaces."""
    return list(iter_dataset(split, n, seed, qtype))


def iter_dataset(split: str, n: int, seed: int = 0, qtype: str | None = None) -> Iterator[Sample]:
    for i in range(n):
        yield make_sample(sample_seed(split, seed, i), qtype=qtype)


def vocabulary() -> list[str]:
    """Every word (and punctuation token) the world's questions and answers can contain."""
    words: set[str] = {"?", "answer", ":"}
    for s in SHAPES:
        words.update({s, PLURALS[s]})
    words.update(COLOR_NAMES)
    words.update(NUMBER_WORDS)
    words.update({"yes", "no"})
    for rel in RELATIONS:
        words.update(rel.split())
    words.update("what color is the how many are there a an shape object".split())
    return sorted(words)
