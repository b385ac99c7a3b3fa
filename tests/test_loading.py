"""Offline tests for occam.archs (model builders) and occam.loading (load_model_and_processor)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from occam import archs, loading
from occam.loading import QwenVLProcessor, load_model_and_processor

TINY = archs.TINY_ARCH_NAMES
REAL = archs.REAL_ARCH_NAMES

#: merged visual tokens of a 64x48 (w x h) image for each tiny family
TINY_VISUAL_TOKENS = {
    # CLIP 56px / patch 7: 8x8 patches (CLS dropped by the "default" strategy)
    "tiny-llava": 64,
    # base 8x8 = 64 + best pinpoint 56x112 (2 tiles) -> 8x16 grid, unpadded to 8x10 = 80, + 8 newlines
    "tiny-llava-next": 152,
    # smart_resize to 48x64 (factor 8) -> 12x16 patches of 4px -> 6x8 merged tokens
    "tiny-qwen2.5-vl": 48,
    "tiny-qwen3-vl": 48,
    # Video-LLaVA's image path is LLaVA-1.5's: 8x8 patches
    "tiny-video-llava": 64,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models are dominated by threading overhead: with 2 shared cores a forward takes ~0.5 s
    # with 2 threads and ~5 ms with 1.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _image(w=64, h=48, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))


def _conversation(question="What is in the image?"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _inputs(processor, images=None, question="What is in the image?"):
    images = [_image()] if images is None else images
    prompt = processor.apply_chat_template(_conversation(question), add_generation_prompt=True)
    assert isinstance(prompt, str)
    return prompt, processor(images=images, text=[prompt], return_tensors="pt")


@pytest.fixture(scope="module")
def tiny_models():
    return {name: archs.build(name) for name in TINY}


# ------------------------------------------------------------------------------------------------
# tiny architectures
# ------------------------------------------------------------------------------------------------


def test_arch_names():
    assert set(archs.ARCH_NAMES) == {
        "llava-1.5-7b", "llava-next-7b", "qwen2.5-vl-7b", "qwen3-vl-8b",
        "tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl",
        "video-llava-7b", "tiny-video-llava",
    }
    with pytest.raises(KeyError):
        archs.config_for("gpt-5")


@pytest.mark.parametrize("name", TINY)
def test_tiny_builds_fast_and_small(name):
    t0 = time.perf_counter()
    model, processor = archs.build(name)
    assert time.perf_counter() - t0 < 2.0
    expected_cls = {
        "tiny-llava": "LlavaForConditionalGeneration",
        "tiny-llava-next": "LlavaNextForConditionalGeneration",
        "tiny-qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
        "tiny-qwen3-vl": "Qwen3VLForConditionalGeneration",
        "tiny-video-llava": "VideoLlavaForConditionalGeneration",
    }[name]
    assert type(model).__name__ == expected_cls
    assert not model.training
    assert model.dtype == torch.float32
    tc = model.config.get_text_config()
    assert 32 <= tc.hidden_size <= 64 and tc.num_hidden_layers == 4 and 2 <= tc.num_attention_heads <= 4
    assert 300 <= tc.vocab_size <= 1000
    if "qwen" in name:
        assert tc.num_key_value_heads < tc.num_attention_heads  # GQA, as in the real Qwen models
        assert model.config.vision_config.depth in (2, 3)
        assert model.config.vision_config.spatial_merge_size == 2
        assert model.config.vision_config.temporal_patch_size == 2
    else:
        assert model.config.vision_config.num_hidden_layers in (2, 3)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    # processor types: PIL image processors only
    expected_ip = {
        "tiny-llava": "CLIPImageProcessorPil",
        "tiny-llava-next": "LlavaNextImageProcessorPil",
        "tiny-qwen2.5-vl": "Qwen2VLImageProcessorPil",
        "tiny-qwen3-vl": "Qwen2VLImageProcessorPil",
        "tiny-video-llava": "CLIPImageProcessorPil",
    }[name]
    assert type(processor.image_processor).__name__ == expected_ip


@pytest.mark.parametrize("name", TINY)
def test_tiny_special_token_ids_match_config(name, tiny_models):
    model, processor = tiny_models[name]
    tok, cfg = processor.tokenizer, model.config
    if "llava" in name:
        assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id == cfg.image_token_index
        assert tok.bos_token == "<s>" and tok.bos_token_id == 1 and tok.eos_token_id == 2
        assert tok.pad_token_id == cfg.pad_token_id
        ids = tok("USER: <image>\nhi")["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(cfg.image_token_id) == 1
    else:
        assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id
        assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id
        assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
        assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
        assert tok.eos_token == "<|im_end|>"
        for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            assert tok.convert_tokens_to_ids(t) < cfg.get_text_config().vocab_size
        ids = tok("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>")["input_ids"]
        assert ids.count(cfg.image_token_id) == 1 and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert max(tok.get_vocab().values()) < cfg.get_text_config().vocab_size
    text = "Hello, wörld! 123"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_generate_and_layout(name, tiny_models):
    model, processor = tiny_models[name]
    prompt, inputs = _inputs(processor)
    cfg = model.config
    if "llava" in name:
        assert prompt == "USER: <image>\nWhat is in the image? ASSISTANT:"
        expected_keys = {"input_ids", "attention_mask", "pixel_values"} | ({"image_sizes"} if "next" in name else set())
    else:
        assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the image?<|im_end|>\n" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")
        assert prompt.startswith("<|im_start|>system\n") == (name == "tiny-qwen2.5-vl")
        expected_keys = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert set(inputs.keys()) == expected_keys

    ids = inputs["input_ids"][0]
    pos = (ids == cfg.image_token_id).nonzero().flatten()
    assert len(pos) == TINY_VISUAL_TOKENS[name]
    assert torch.equal(pos, torch.arange(pos[0], pos[0] + len(pos)))  # one contiguous run
    first, last = int(pos[0]), int(pos[-1])
    tok = processor.tokenizer
    if "llava" in name:
        assert tok.decode(ids[:first]) == "<s>USER: " and tok.decode(ids[last + 1: last + 2]) == "\n"
    else:
        assert ids[first - 1] == cfg.vision_start_token_id and ids[last + 1] == cfg.vision_end_token_id
        assert torch.equal(inputs["mm_token_type_ids"][0], (ids == cfg.image_token_id).long())
        grid = inputs["image_grid_thw"][0]
        assert grid.tolist() == [1, 12, 16]
        assert inputs["pixel_values"].shape[0] == int(grid.prod())

    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(**inputs)
    assert time.perf_counter() - t0 < 2.0
    assert out.logits.shape == (1, ids.shape[0], cfg.get_text_config().vocab_size)
    assert torch.isfinite(out.logits).all()

    gen = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert gen.shape == (1, ids.shape[0] + 3)
    assert torch.equal(gen[0, : ids.shape[0]], ids)
    with torch.no_grad():  # greedy first token == argmax of the full forward
        assert gen[0, ids.shape[0]] == out.logits[0, -1].argmax()


@pytest.mark.parametrize("name", TINY)
def test_tiny_batch_of_two(name, tiny_models):
    model, processor = tiny_models[name]
    prompts = [
        processor.apply_chat_template(_conversation("Hi"), add_generation_prompt=True),
        processor.apply_chat_template(_conversation("A longer question here?"), add_generation_prompt=True),
    ]
    images = [_image(64, 48, 1), _image(40, 72, 2)]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    assert inputs["input_ids"].shape[0] == 2
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding for generation
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all()
    gen = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert gen.shape == (2, inputs["input_ids"].shape[1] + 2)


def test_tiny_seeded_and_text_layers():
    a, _ = archs.build("tiny-llava", seed=0)
    b, _ = archs.build("tiny-llava", seed=0)
    c, _ = archs.build("tiny-llava", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    rng_before = torch.random.get_rng_state()
    archs.build("tiny-qwen3-vl", seed=3)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the global RNG is left alone

    for name in TINY:
        m, _ = archs.build(name, text_layers=2, dtype=torch.bfloat16)
        assert m.config.get_text_config().num_hidden_layers == 2
        assert len(m.model.language_model.layers) == 2
        assert m.dtype == torch.bfloat16
    m, _ = archs.build("tiny-llava", attn_implementation="eager")
    assert m.config._attn_implementation == "eager"


def test_tiny_qwen3_deepstack(tiny_models):
    model, processor = tiny_models["tiny-qwen3-vl"]
    idx = list(model.config.vision_config.deepstack_visual_indexes)
    assert len(idx) >= 1 and max(idx) < model.config.vision_config.depth
    _, inputs = _inputs(processor)
    with torch.no_grad():
        vis = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert len(vis.deepstack_features) == len(idx)
    assert vis.pooler_output[0].shape == (48, model.config.text_config.hidden_size)
    assert vis.deepstack_features[0][0].shape == (48, model.config.text_config.hidden_size)


def test_qwen_processor_placeholder_errors(tiny_models):
    _, processor = tiny_models["tiny-qwen2.5-vl"]
    assert isinstance(processor, QwenVLProcessor)
    prompt = processor.apply_chat_template(_conversation(), add_generation_prompt=True)
    with pytest.raises(ValueError):
        processor(images=[_image(), _image()], text=[prompt], return_tensors="pt")
    with pytest.raises(ValueError):
        processor(images=None, text=[prompt], return_tensors="pt")
    text_only = processor(text=["plain text"], return_tensors="pt")
    assert text_only["mm_token_type_ids"].sum() == 0


# ------------------------------------------------------------------------------------------------
# save / load round trip
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip(name, tiny_models, tmp_path):
    model, processor = tiny_models[name]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    _, inputs = _inputs(processor)
    with torch.no_grad():
        ref = model(**inputs).logits

    loaded, proc2 = load_model_and_processor(str(tmp_path))
    assert type(loaded) is type(model)
    assert type(proc2.image_processor) is type(processor.image_processor)
    assert type(proc2) is type(processor)
    assert loaded.dtype == torch.float32 and not loaded.training
    prompt2, inputs2 = _inputs(proc2)
    assert set(inputs2.keys()) == set(inputs.keys())
    for k in inputs:
        assert torch.equal(inputs[k], inputs2[k]), k
    with torch.no_grad():
        out = loaded(**inputs2).logits
    assert torch.equal(out, ref)

    bf16, _ = load_model_and_processor(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def test_load_builtin_names():
    model, processor = load_model_and_processor("tiny-qwen3-vl")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert isinstance(processor, QwenVLProcessor)
    model, _ = load_model_and_processor("tiny-llava", dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_unsupported_model_type(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(TypeError) as err:
        load_model_and_processor(tmp_path)
    msg = str(err.value)
    assert "'llama'" in msg
    for mt in ("llava", "llava_next", "qwen2_5_vl", "qwen3_vl"):
        assert repr(mt) in msg
    with pytest.raises(TypeError):
        loading.model_class_for("bert")


def test_missing_folder_and_unknown_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_processor(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError):
        load_model_and_processor("./no_such_model_dir/")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        load_model_and_processor(tmp_path / "file.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="Could not read a model config"):
        load_model_and_processor(empty)

    # an id that is neither local nor cached: a clear, fast error (no 30 s of hub retries)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="nothing can be downloaded") as err:
        load_model_and_processor("occam-test-org/no-such-model-xyz")
    assert "unreachable" in str(err.value)
    assert time.perf_counter() - t0 < 5.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline mode"):
        load_model_and_processor("occam-test-org/no-such-model-xyz")


def test_toy(monkeypatch, tmp_path, tiny_models):
    assert loading.toy_path() == loading.REPO_ROOT / "assets" / "toy"
    assert (loading.REPO_ROOT / "occam" / "loading.py").is_file()
    monkeypatch.setattr(loading, "toy_path", lambda: tmp_path / "toy")
    with pytest.raises(FileNotFoundError, match="toy"):
        load_model_and_processor("toy")
    model, processor = tiny_models["tiny-llava"]
    model.save_pretrained(tmp_path / "toy")
    processor.save_pretrained(tmp_path / "toy")
    loaded, _ = load_model_and_processor("toy")
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"


# ------------------------------------------------------------------------------------------------
# real shapes (configs and meta-device builds only: nothing is materialised)
# ------------------------------------------------------------------------------------------------

REAL_EXPECTED = {
    "llava-1.5-7b": dict(
        cls="LlavaConfig", hidden=4096, layers=32, heads=32, kv=32, inter=11008, vocab=32064,
        v_hidden=1024, v_layers=24, v_heads=16, patch=14, image_token=32000, params=7_063_427_072,
    ),
    "llava-next-7b": dict(
        cls="LlavaNextConfig", hidden=4096, layers=32, heads=32, kv=32, inter=11008, vocab=32064,
        v_hidden=1024, v_layers=24, v_heads=16, patch=14, image_token=32000, params=7_063_431_168,
    ),
    "qwen2.5-vl-7b": dict(
        cls="Qwen2_5_VLConfig", hidden=3584, layers=28, heads=28, kv=4, inter=18944, vocab=152064,
        v_hidden=1280, v_layers=32, v_heads=16, patch=14, image_token=151655, params=8_292_166_656,
    ),
    "qwen3-vl-8b": dict(
        cls="Qwen3VLConfig", hidden=4096, layers=36, heads=32, kv=8, inter=12288, vocab=151936,
        v_hidden=1152, v_layers=27, v_heads=16, patch=16, image_token=151655, params=8_767_123_696,
    ),
    "video-llava-7b": dict(   # two CLIP-L/14 towers (images, video frames) at 224 px + Vicuna-7B
        cls="VideoLlavaConfig", hidden=4096, layers=32, heads=32, kv=32, inter=11008, vocab=32064,
        v_hidden=1024, v_layers=24, v_heads=16, patch=14, image_token=32000, params=7_366_279_168,
    ),
}


@pytest.mark.parametrize("name", REAL)
def test_real_configs(name):
    e = REAL_EXPECTED[name]
    cfg = archs.config_for(name)
    assert type(cfg).__name__ == e["cls"]
    tc, vc = cfg.get_text_config(), cfg.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads,
            tc.intermediate_size, tc.vocab_size) == (e["hidden"], e["layers"], e["heads"], e["kv"], e["inter"], e["vocab"])
    assert cfg.image_token_id == e["image_token"]
    assert vc.hidden_size == e["v_hidden"] and vc.patch_size == e["patch"]
    assert (vc.num_hidden_layers if "llava" in name else vc.depth) == e["v_layers"]
    assert (vc.num_attention_heads if "llava" in name else vc.num_heads) == e["v_heads"]
    if "llava" in name:
        assert vc.image_size == (224 if name == "video-llava-7b" else 336) and cfg.vision_feature_layer == -2
        assert cfg.vision_feature_select_strategy == "default"
    else:
        assert (cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.video_token_id) == (151652, 151653, 151656)
        assert vc.out_hidden_size == tc.hidden_size and vc.spatial_merge_size == 2
    if name == "llava-next-7b":
        assert cfg.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    if name == "qwen2.5-vl-7b":
        assert list(vc.fullatt_block_indexes) == [7, 15, 23, 31] and vc.window_size == 112
        assert tc.rope_parameters["mrope_section"] == [16, 24, 24]
    if name == "qwen3-vl-8b":
        assert list(vc.deepstack_visual_indexes) == [8, 16, 24]
        assert tc.head_dim == 128 and tc.rope_parameters["mrope_section"] == [24, 20, 20]
        assert tc.rope_parameters.get("mrope_interleaved") is True

    short = archs.config_for(name, text_layers=2)
    assert short.get_text_config().num_hidden_layers == 2
    assert short.get_text_config().hidden_size == e["hidden"]
    assert archs.config_for(name).get_text_config().num_hidden_layers == e["layers"]  # no mutation


@pytest.mark.parametrize("name", REAL)
def test_real_meta_build_and_token_counts(name):
    e = REAL_EXPECTED[name]
    model, processor = archs.build(name, device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == e["params"]
    short, _ = archs.build(name, device="meta", text_layers=1)
    assert len(short.model.language_model.layers) == 1

    cfg = model.config
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>" if "llava" in name else "<|image_pad|>") == cfg.image_token_id

    def count(w, h):
        _, inputs = _inputs(processor, images=[Image.new("RGB", (w, h), (128, 64, 32))])
        return int((inputs["input_ids"] == cfg.image_token_id).sum())

    if name == "llava-1.5-7b":
        assert count(336, 336) == 576 and count(640, 480) == 576
    elif name == "video-llava-7b":
        assert count(224, 224) == 256 and count(640, 480) == 256
        assert cfg.video_token_id == tok.convert_tokens_to_ids("<video>") == 32001
        frames = [Image.new("RGB", (640, 480), (9 * i, 64, 32)) for i in range(8)]
        conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
        inputs = processor(videos=[frames], text=[processor.apply_chat_template(conv, add_generation_prompt=True)],
                           return_tensors="pt")
        assert int((inputs["input_ids"] == cfg.video_token_id).sum()) == 8 * 257 == cfg.video_seq_length
        assert inputs["pixel_values_videos"].shape == (1, 8, 3, 224, 224)
    elif name == "llava-next-7b":
        # 672x672 -> best pinpoint 672x672: base 24*24 + 48*48 unpadded grid + 48 newlines
        assert count(672, 672) == 576 + 48 * 48 + 48 == 2928
        # 336x336 -> pinpoint 336x672 (2 tiles, 24x48 grid) unpadded back to 24x24, + 24 newlines
        assert count(336, 336) == 576 + 24 * 24 + 24 == 1176
    elif name == "qwen2.5-vl-7b":
        assert count(448, 448) == 256 and count(336, 336) == 144
    else:
        assert count(512, 512) == 256 and count(256, 256) == 64


def test_loading_module_file_json_roundtrip(tmp_path, tiny_models):
    """The saved folders are plain HF folders (config.json carries the model_type)."""
    model, processor = tiny_models["tiny-qwen2.5-vl"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["patch_size"] == 4
