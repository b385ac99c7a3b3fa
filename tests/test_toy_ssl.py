"""Self-supervised tower pre-training (occam.toy.ssl) on a miniature tower, then the VLM phase from it."""

import torch
from transformers import LlavaForConditionalGeneration

from occam.toy import ssl, train

TINY = ["--vision-hidden", "32", "--vision-layers", "2", "--vision-heads", "1"]


def test_ssl_loss_decreases_and_the_tower_feeds_the_vlm_phase(tmp_path):
    torch.manual_seed(0)
    rep = ssl.main(["--out", str(tmp_path / "ssl"), "--steps", "40", "--batch", "8", "--warmup", "5",
                    "--lr", "3e-3", "--prototypes", "32", "--log-every", "20", "--probe-every", "0",
                    "--save-every", "0"] + TINY)
    first, last = sum(rep["losses"][:5]) / 5, sum(rep["losses"][-5:]) / 5
    assert last < first, (first, last)
    probe = rep["history"][-1]["plain"]  # measured, never trained: one row per layer
    assert len(probe) == 2 and all(0 <= r["register_share"] <= 1 for r in probe)
    tower = torch.load(tmp_path / "ssl" / "tower.pt", weights_only=True)
    assert tower["embeddings.register_tokens"].shape == (1, 4, 32)

    out = tmp_path / "vlm"
    small = ["--text-hidden", "32", "--text-layers", "1", "--text-heads", "2", "--text-intermediate", "64",
             "--batch", "2", "--turns", "2", "--eval-every", "0", "--eval-per-type", "1", "--log-every", "1"]
    rep2 = train.main(["--out", str(out), "--steps", "2", "--vision-from", str(tmp_path / "ssl" / "tower.pt"),
                       "--freeze-vision"] + TINY + small)
    assert rep2["vision_phase_steps"] == 0 and rep2["freeze_vision"]
    saved = LlavaForConditionalGeneration.from_pretrained(str(out)).model.vision_tower.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in tower.items())  # frozen: the SSL tower, unchanged
