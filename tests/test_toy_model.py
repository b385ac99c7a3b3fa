"""The shipped toy VLM in assets/toy: loads offline with plain transformers and answers held-out questions.

Nothing here is skipped: a missing or broken checkpoint makes these tests FAIL.
"""

import json
from collections import defaultdict
from pathlib import Path


import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from occam.toy import world as W

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
EXAMPLES = ROOT / "assets" / "examples"
N_EVAL = 200
EVAL_SEED = 7  # held-out seed space, different from the training report's set (seed 0)


def _prompt(processor, question):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


@pytest.fixture(scope="module")
def toy():
    assert TOY.is_dir(), f"toy checkpoint missing: {TOY} (run python -m occam.toy.train --out assets/toy)"
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(str(TOY), dtype=torch.float32, local_files_only=True)
    model.eval()
    processor = LlavaProcessor.from_pretrained(str(TOY), local_files_only=True)
    return model, processor


@torch.no_grad()
def _answer(model, processor, images, questions):
    inputs = processor(
        images=list(images), text=[_prompt(processor, q) for q in questions], return_tensors="pt", padding=True
    )
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    gen = out[:, inputs["input_ids"].shape[1] :]
    res = []
    for g in gen:
        words = processor.tokenizer.decode(g, skip_special_tokens=True).split()
        res.append(words[0] if words else "")
    return res, gen


def test_checkpoint_files_and_size():
    assert (TOY / "config.json").is_file()
    assert (TOY / "model.safetensors").is_file()
    assert (TOY / "train_report.json").is_file()
    total = sum(p.stat().st_size for p in TOY.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, total


def test_architecture(toy):
    model, processor = toy
    cfg = model.config
    assert model.dtype == torch.float32
    assert cfg.vision_config.model_type == "dinov2_with_registers"
    assert cfg.vision_config.num_register_tokens >= 1
    assert cfg.vision_feature_select_strategy == "default" and cfg.vision_feature_layer == -1
    assert cfg.text_config.model_type == "llama" and cfg.text_config.num_hidden_layers >= 6
    vc = cfg.vision_config
    n_vis = (vc.image_size // vc.patch_size) ** 2 + vc.num_register_tokens
    assert 40 <= n_vis <= 150 and cfg.image_seq_length == n_vis
    # the processor inserts exactly as many image tokens as the model produces visual features
    s = W.make_sample(W.sample_seed("heldout", EVAL_SEED, 0))
    inputs = processor(images=s.image, text=_prompt(processor, s.question), return_tensors="pt")
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == n_vis
    with torch.no_grad():
        feats = model.get_image_features(
            pixel_values=inputs["pixel_values"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    assert feats[0].shape == (n_vis, cfg.text_config.hidden_size)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == cfg.image_token_id
    assert AutoProcessor.from_pretrained(str(TOY), local_files_only=True).__class__.__name__ == "LlavaProcessor"


def test_prompt_format(toy):
    _, processor = toy
    p = _prompt(processor, "what color is the circle?")
    assert p.count("<image>") == 1 and p.rstrip().endswith("answer:")
    ids = processor.tokenizer(p, add_special_tokens=True)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids
    # tokenizer adds nothing beyond the template (bos comes from the template exactly once)
    assert ids.count(processor.tokenizer.bos_token_id) == 1


@pytest.fixture(scope="module")
def heldout_accuracy(toy):
    """Accuracy of the shipped model on N_EVAL fixed held-out questions, per type and overall."""
    model, processor = toy
    qtypes = W.QTYPES
    samples = [
        W.make_sample(W.sample_seed("heldout", EVAL_SEED, i), qtype=qtypes[i % len(qtypes)]) for i in range(N_EVAL)
    ]
    correct, total = defaultdict(int), defaultdict(int)
    for b in range(0, N_EVAL, 50):
        chunk = samples[b : b + 50]
        preds, _ = _answer(model, processor, [s.image for s in chunk], [s.question for s in chunk])
        for s, p in zip(chunk, preds):
            total[s.qtype] += 1
            correct[s.qtype] += int(p == s.answer)
    acc = {q: correct[q] / total[q] for q in total}
    overall = sum(correct.values()) / N_EVAL
    print("held-out accuracy", {k: round(v, 3) for k, v in acc.items()}, "overall", overall)
    return overall, acc


def test_heldout_accuracy_meets_target(heldout_accuracy):
    """Issue 3: at least 90% on 200 fixed held-out questions (40 per type here, so the per-type floor
    is a little looser than the training report's 90% on 200 per type)."""
    overall, acc = heldout_accuracy
    assert overall >= 0.90, (overall, acc)
    assert min(acc.values()) >= 0.85, acc


def test_generation_ends_with_eos_and_batching_consistent(toy):
    model, processor = toy
    samples = [W.make_sample(W.sample_seed("heldout", EVAL_SEED, 1000 + i)) for i in range(6)]
    batched, gen = _answer(model, processor, [s.image for s in samples], [s.question for s in samples])
    single = [_answer(model, processor, [s.image], [s.question])[0][0] for s in samples]
    assert batched == single
    eos = processor.tokenizer.eos_token_id
    assert sum(int(g[1] == eos) for g in gen) >= 5  # "<answer> </s>"


def test_examples_exist_and_answered(toy):
    model, processor = toy
    spec = json.loads((EXAMPLES / "examples.json").read_text())
    assert 4 <= len(spec) <= 6
    images = []
    for e in spec:
        f = EXAMPLES / e["image"]
        assert f.is_file() and f.stat().st_size < 50_000
        images.append(Image.open(f).convert("RGB"))
    preds, _ = _answer(model, processor, images, [e["question"] for e in spec])
    assert np.mean([p == e["answer"] for p, e in zip(preds, spec)]) >= 0.75
