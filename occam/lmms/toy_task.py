"""An offline lmms-eval task on the toy world, scored like ``python -m occam.bench accuracy``.

``python -m occam.lmms.toy_task --out DIR`` writes DIR/data (held-out questions as the ``test`` split,
calibration questions as ``train``, both saved with ``datasets``) and DIR/occam_toy.yaml; then
``lmms-eval --model occam --model_args pretrained=toy --tasks occam_toy --include_path DIR``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from occam.toy import world

TASK = "occam_toy"
YAML = """\
task: {task}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
training_split: train
output_type: generate_until
doc_to_visual: !function occam.lmms.toy_task.doc_to_visual
doc_to_text: !function occam.lmms.toy_task.doc_to_text
doc_to_target: answer
process_results: !function occam.lmms.toy_task.process_results
generation_kwargs:
  max_new_tokens: 3
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0
"""


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict:
    """1.0 iff the answer is the reference word (the accuracy benchmark's rule: strip, lower-case, equal)."""
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}


def samples(n: int, seed: int = 0, calib: int = 0) -> dict[str, list]:
    """The toy-world items of each split, as ``occam.bench accuracy`` draws them for the same n / seed."""
    return {"test": world.dataset("heldout", n, seed=seed), "train": world.dataset("train", calib, seed=seed + 7)}


def write(out: str | Path, n: int = 50, seed: int = 0, calib: int = 20, task: str = TASK) -> Path:
    """Write the dataset and the task yaml under ``out``; returns the yaml's path."""
    import datasets

    out = Path(out).resolve()
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "qtype": datasets.Value("string")})
    splits = {name: datasets.Dataset.from_dict(
        {"image": [s.image for s in items], "question": [s.question for s in items],
         "answer": [s.answer for s in items], "qtype": [s.qtype for s in items]}, features=features)
        for name, items in samples(n, seed, calib).items()}
    datasets.DatasetDict(splits).save_to_disk(str(out / "data"))
    yaml = out / f"{task}.yaml"
    yaml.write_text(YAML.format(task=task, data=out / "data"))
    return yaml


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m occam.lmms.toy_task", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for data/ and the task yaml (pass it as --include_path)")
    p.add_argument("--n", type=int, default=50, help="held-out questions (test split)")
    p.add_argument("--calib", type=int, default=20, help="train-split questions (for calib_task=occam_toy)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write(args.out, args.n, args.seed, args.calib))


if __name__ == "__main__":
    main()
