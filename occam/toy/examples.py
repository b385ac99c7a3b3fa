"""Write a few example images + questions from the shapes world to ``assets/examples``.

    python -m occam.toy.examples [--out assets/examples]

Images are saved at the model's native size (96x96), i.e. exactly what the toy VLM sees.
"""

from __future__ import annotations

import argparse
import json
import os

from . import world as W

# (file stem, held-out index, qtype, n_objects, background): varied complexity / redundancy
EXAMPLES = [
    ("plain_1obj_color", 0, "color", 1, "plain"),
    ("gradient_3obj_shape", 1, "shape", 3, "gradient"),
    ("texture_4obj_count", 2, "count", 4, "texture"),
    ("noise_5obj_position", 3, "position", 5, "noise"),
    ("plain_6obj_exist", 4, "exist", 6, "plain"),
]
EXAMPLE_SEED = 900  # held-out seed space, away from test/eval seeds


def make_examples():
    out = []
    for stem, idx, qtype, n, bg in EXAMPLES:
        # deterministic: first index (stepping by 100) whose answer is not the trivial "zero"
        while True:
            s = W.make_sample(W.sample_seed("heldout", EXAMPLE_SEED, idx), qtype=qtype, n_objects=n, background=bg)
            if s.answer != "zero":
                break
            idx += 100
        out.append((stem, s))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/examples")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    spec = []
    for stem, s in make_examples():
        fn = f"{stem}.png"
        s.image.save(os.path.join(args.out, fn), optimize=True)
        spec.append(
            {
                "image": fn,
                "question": s.question,
                "answer": s.answer,
                "qtype": s.qtype,
                "complexity": s.scene.complexity,
            }
        )
    with open(os.path.join(args.out, "examples.json"), "w") as f:
        json.dump(spec, f, indent=2)
    for e in spec:
        print(e)


if __name__ == "__main__":
    main()
