"""The training script end to end on a miniature architecture: from scratch, then continued with --init-from."""

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from occam.toy import train

SMALL = ["--vision-hidden", "32", "--vision-layers", "1", "--vision-heads", "1", "--text-hidden", "32",
         "--text-layers", "2", "--text-heads", "2", "--text-intermediate", "64", "--batch", "2", "--turns", "2",
         "--eval-every", "0", "--eval-per-type", "2", "--log-every", "1"]


def test_train_from_scratch_then_continue(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    rep = train.main(["--out", str(first), "--steps", "2", "--vision-steps", "1", "--vision-batch", "2"] + SMALL)
    assert rep["steps"] == 2 and rep["vision_phase_steps"] == 1 and rep["arch"]["text_layers"] == 2
    assert set(rep["heldout_accuracy"]) == {"color", "count", "exist", "position", "shape", "overall"}
    model = LlavaForConditionalGeneration.from_pretrained(str(first), local_files_only=True)
    assert model.config.text_config.num_hidden_layers == 2
    LlavaProcessor.from_pretrained(str(first), local_files_only=True)

    rep2 = train.main(["--out", str(second), "--init-from", str(first), "--steps", "2", "--seed", "1",
                       "--late-qtype-weights", "position=4", "--late-from", "0.5"] + SMALL)
    assert rep2["init_from"] == str(first) and rep2["previous_stage"]["steps"] == 2
    assert rep2["late_qtype_weights"] == {"from_step": 1, "weights": {"position": 4.0}}
    assert rep2["total_train_wall_time_s"] >= rep["train_wall_time_s"]
    # the continued run really changed the weights, and wrote the same processor files as a fresh build
    a = LlavaForConditionalGeneration.from_pretrained(str(first)).state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(str(second)).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (first / name).read_text() == (second / name).read_text(), name
    assert json.loads((second / "train_report.json").read_text())["command"].startswith("python -m occam.toy.train")


def test_unknown_question_type_in_weights_is_rejected():
    with pytest.raises(ValueError, match="unknown question type 'colour'"):
        train.parse_weights("colour=2")
