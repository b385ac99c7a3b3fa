"""Train the toy LLaVA end to end from scratch on freshly generated shapes-world samples.

    python -m occam.toy.train --out assets/toy [--steps N --seed 0 --threads 1]

Seeded and reproducible (same seed, steps, threads -> same weights). Writes the model, processor and
tokenizer with ``save_pretrained`` plus ``train_report.json`` (config, steps, wall time, held-out
accuracy per question type, measured with greedy ``model.generate`` on chat-template prompts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import fields

import numpy as np
import torch

from . import build as B
from . import world as W


# --------------------------------------------------------------------------- auxiliary patch supervision

_COLOR_ARR = np.array([W.COLORS[c] for c in W.COLOR_NAMES], dtype=np.int16)  # (6, 3)
def aux_sizes(grid: int) -> tuple[int, ...]:
    """Number of classes of each per-patch auxiliary target (see :func:`patch_targets`)."""
    return (1 + len(W.SHAPES), 1 + len(W.COLOR_NAMES), 1 + len(W.COLOR_NAMES), 1 + len(W.SHAPES), grid, grid)


def patch_targets(sample, patch: int) -> np.ndarray:
    """Per-patch labels from the scene (training-only auxiliary loss on the vision tower).

    Returns (6, g*g) int64: [shape of the object whose centre is in the patch (0 = none),
    its colour (0 = none), colour covering most of the patch if >= 20% of it (0 = background),
    shape of that covering object (0 = background), patch row, patch column]."""
    sc = sample.scene
    g = sc.size // patch
    out = np.zeros((6, g, g), dtype=np.int64)
    out[4] = np.arange(g)[:, None]
    out[5] = np.arange(g)[None, :]
    for o in sc.objects:
        x, y = o.center
        out[0, y // patch, x // patch] = 1 + W.SHAPES.index(o.shape)
        out[1, y // patch, x // patch] = 1 + W.COLOR_NAMES.index(o.color)
    img = np.asarray(sample.image, dtype=np.int16)[: g * patch, : g * patch]
    match = np.all(img[:, :, None, :] == _COLOR_ARR[None, None], axis=-1)  # (H, W, 6)
    frac = match.reshape(g, patch, g, patch, -1).mean(axis=(1, 3))  # (g, g, 6)
    best = frac.argmax(-1)
    covered = frac.max(-1) >= 0.2
    out[2] = np.where(covered, best + 1, 0)
    # shape of the covering object: the object of that colour whose box overlaps the patch most
    for gy, gx in zip(*np.nonzero(covered)):
        col = W.COLOR_NAMES[best[gy, gx]]
        px0, py0, px1, py1 = gx * patch, gy * patch, gx * patch + patch - 1, gy * patch + patch - 1
        bestov, shp = -1, 0
        for o in sc.objects:
            if o.color != col:
                continue
            x0, y0, x1, y1 = o.bbox
            ov = max(0, min(x1, px1) - max(x0, px0) + 1) * max(0, min(y1, py1) - max(y0, py0) + 1)
            if ov > bestov:
                bestov, shp = ov, 1 + W.SHAPES.index(o.shape)
        out[3, gy, gx] = shp
    return out.reshape(6, g * g)


def pixels(samples) -> torch.Tensor:
    """The model's pixel_values for a list of samples (same result as the processor)."""
    return B.pixel_values_from_uint8(np.stack([np.array(s.image) for s in samples]))


def aux_targets(samples, patch: int) -> torch.Tensor:
    """(B, 6, g*g) per-patch labels of :func:`patch_targets` for a list of samples."""
    return torch.from_numpy(np.stack([patch_targets(s, patch) for s in samples]))


class AuxHead(torch.nn.Module):
    """Linear probe on the last vision layer's patch tokens (discarded after training)."""

    def __init__(self, hidden: int, n_reg: int, grid: int):
        super().__init__()
        self.n_skip = 1 + n_reg
        self.sizes = aux_sizes(grid)
        self.proj = torch.nn.Linear(hidden, sum(self.sizes))
        self.feats = None

    def hook(self, module, args, output):
        self.feats = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    @torch.no_grad()
    def center_accuracy(self, targets: torch.Tensor) -> tuple[float, float]:
        """Accuracy of (shape, colour) at object-centre patches (diagnostic)."""
        logits = self.proj(self.feats[:, self.n_skip :])
        sel = targets[:, 0] > 0
        n0, n1 = self.sizes[0], self.sizes[1]
        sh = (logits[..., :n0].argmax(-1)[sel] == targets[:, 0][sel]).float().mean().item()
        co = (logits[..., n0 : n0 + n1].argmax(-1)[sel] == targets[:, 1][sel]).float().mean().item()
        return sh, co

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        logits = self.proj(self.feats[:, self.n_skip :])  # (B, P, sum)
        tot, off = 0.0, 0
        for k, n in enumerate(self.sizes):
            w = torch.ones(n)
            if k < 4:
                w[0] = 0.1  # "nothing here" is by far the most frequent class
            tot = tot + torch.nn.functional.cross_entropy(
                logits[..., off : off + n].flatten(0, 1), targets[:, k].flatten(), weight=w
            )
            off += n
        self.feats = None
        return tot / len(self.sizes)


# --------------------------------------------------------------------------- batching


class Encoder:
    """Question -> prompt ids (exactly the processor's chat-template prompt), cached per question."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        self.n_img = None
        self._cache: dict[str, list[int]] = {}
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id
        self.answer_ids = {}

    def prompt_ids(self, question: str, image) -> list[int]:
        ids = self._cache.get(question)
        if ids is None:
            text = B.prompt_for(self.processor, question)
            ids = self.processor(images=image, text=text, return_tensors="np")["input_ids"][0].tolist()
            self._cache[question] = ids
        return ids

    def followup_ids(self, question: str) -> list[int]:
        """Ids of a later turn "<question> answer:" (continuing after the previous "<answer></s>")."""
        key = "\x00" + question
        ids = self._cache.get(key)
        if ids is None:
            ids = self._cache[key] = self.tok(question + " answer:", add_special_tokens=False)["input_ids"]
        return ids

    def answer_id(self, answer: str) -> int:
        a = self.answer_ids.get(answer)
        if a is None:
            ids = self.tok(answer, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, (answer, ids)
            a = self.answer_ids[answer] = ids[0]
        return a


def collate(samples, enc: Encoder, with_answer: bool = True, patch: int | None = None):
    """``samples``: Sample objects, or (Sample, [(question, answer), ...]) for multi-turn training
    sequences "<s><image> q1? answer: a1</s> q2? answer: a2</s> ..." (the chat template's multi-turn form)."""
    seqs, labels = [], []
    for item in samples:
        s, extra = item if isinstance(item, tuple) else (item, [])
        p = enc.prompt_ids(s.question, s.image)
        if with_answer:
            a = [enc.answer_id(s.answer), enc.eos]
            seq, lab = p + a, [-100] * len(p) + a
            for q2, a2 in extra:
                f = enc.followup_ids(q2)
                a = [enc.answer_id(a2), enc.eos]
                seq += f + a
                lab += [-100] * len(f) + a
            seqs.append(seq)
            labels.append(lab)
        else:
            seqs.append(p)
    samples = [item[0] if isinstance(item, tuple) else item for item in samples]
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), enc.pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, x in enumerate(seqs):  # left padding, as used for batched generation
        ids[i, L - len(x) :] = torch.tensor(x)
        mask[i, L - len(x) :] = 1
        if with_answer:
            lab[i, L - len(x) :] = torch.tensor(labels[i])
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "pixel_values": pixels(samples),
           "labels": lab}
    if patch:
        out["aux_targets"] = aux_targets(samples, patch)
    return out


class TrainStream:
    """Fresh training samples: sample i of the stream uses world seed sample_seed('train', seed, i)."""

    def __init__(self, seed: int, qtype_weights: dict[str, float] | None = None):
        self.seed = seed
        self.i = 0
        self.qtypes = list(W.QTYPES)
        self.set_weights(qtype_weights)

    def set_weights(self, qtype_weights: dict[str, float] | None):
        """Relative frequency of each question type (missing types weigh 1)."""
        w = np.array([(qtype_weights or {}).get(q, 1.0) for q in self.qtypes], dtype=np.float64)
        self.p = w / w.sum()

    def next(self, n: int, max_objects: int = W.MAX_OBJECTS, turns: int = 1):
        """``max_objects`` < MAX_OBJECTS draws the object count uniformly from a smaller range (curriculum).
        ``turns`` > 1 adds follow-up questions about the same image (multi-turn sequences)."""
        out = []
        for _ in range(n):
            rng = np.random.default_rng(W.sample_seed("train", self.seed, self.i))
            self.i += 1
            q = self.qtypes[rng.choice(len(self.qtypes), p=self.p)]
            n_obj = None
            if max_objects < W.MAX_OBJECTS:
                lo = 2 if q == "position" else W.MIN_OBJECTS
                n_obj = int(rng.integers(lo, max(lo, max_objects) + 1))
            smp = W.make_sample(rng, qtype=q, n_objects=n_obj)
            if turns <= 1:
                out.append(smp)
                continue
            extra, seen = [], {smp.question}
            for _ in range(4 * turns):
                if len(extra) >= turns - 1:
                    break
                qa = W.ask(smp.scene, rng, self.qtypes[rng.choice(len(self.qtypes), p=self.p)])
                if qa is not None and qa[0] not in seen:
                    seen.add(qa[0])
                    extra.append(qa)
            out.append((smp, extra))
        return out


# --------------------------------------------------------------------------- evaluation


def heldout_set(n_per_type: int, seed: int = 0):
    """Fixed held-out evaluation set: n_per_type samples of each question type."""
    out = []
    for k, q in enumerate(W.QTYPES):
        for i in range(n_per_type):
            out.append(W.make_sample(W.sample_seed("heldout", seed, k * n_per_type + i), qtype=q))
    return out


@torch.no_grad()
def evaluate_generate(model, processor, samples, batch_size: int = 50) -> dict:
    """Greedy ``model.generate`` on chat-template prompts; exact match of the first answer word."""
    model.eval()
    tok = processor.tokenizer
    correct = defaultdict(int)
    total = defaultdict(int)
    for b in range(0, len(samples), batch_size):
        chunk = samples[b : b + batch_size]
        prompts = [B.prompt_for(processor, s.question) for s in chunk]
        inputs = processor(images=[s.image for s in chunk], text=prompts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        gen = out[:, inputs["input_ids"].shape[1] :]
        for s, g in zip(chunk, gen):
            pred = tok.decode(g, skip_special_tokens=True).strip().split()
            pred = pred[0] if pred else ""
            total[s.qtype] += 1
            correct[s.qtype] += int(pred == s.answer)
    acc = {q: correct[q] / total[q] for q in sorted(total)}
    acc["overall"] = sum(correct.values()) / max(1, sum(total.values()))
    return acc


@torch.no_grad()
def evaluate_fast(model, enc, samples, batch_size: int = 100) -> dict:
    """Argmax of the first answer token (teacher-forced, no generate); used for progress logs."""
    model.eval()
    correct = defaultdict(int)
    total = defaultdict(int)
    for b in range(0, len(samples), batch_size):
        chunk = samples[b : b + batch_size]
        batch = collate(chunk, enc, with_answer=False)
        batch.pop("labels")
        logits = model(**batch, logits_to_keep=1).logits[:, -1]
        pred = logits.argmax(-1).tolist()
        for s, p in zip(chunk, pred):
            total[s.qtype] += 1
            correct[s.qtype] += int(p == enc.answer_id(s.answer))
    model.train()
    acc = {q: round(correct[q] / total[q], 4) for q in sorted(total)}
    acc["overall"] = round(sum(correct.values()) / max(1, sum(total.values())), 4)
    return acc


# --------------------------------------------------------------------------- main


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def parse_weights(text: str) -> dict[str, float]:
    """"position=6,count=2" -> {"position": 6.0, "count": 2.0} (question types are checked)."""
    out = {}
    for kv in filter(None, text.split(",")):
        k, v = kv.split("=")
        if k.strip() not in W.QTYPES:
            raise ValueError(f"unknown question type {k!r}; expected one of {W.QTYPES}")
        out[k.strip()] = float(v)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/toy")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-per-type", type=int, default=200, help="final held-out eval: samples per qtype")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop early (and still eval/save) after this")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of saved weights")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="auxiliary per-patch loss on the vision tower")
    ap.add_argument("--vision-steps", type=int, default=700, help="phase 1: vision tower + aux head only")
    ap.add_argument("--vision-batch", type=int, default=64)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--aux-until", type=float, default=1.0, help="fraction of training with the aux loss")
    ap.add_argument("--turns", type=int, default=6, help="questions per training image (multi-turn sequences)")
    ap.add_argument("--curriculum", type=float, default=0.0, help="fraction of steps ramping max objects 2 -> 6")
    ap.add_argument("--init-from", default="", help="continue from a saved checkpoint dir (stage 2)")
    ap.add_argument("--vision-from", default="", help="vision tower weights from occam.toy.ssl (tower.pt); "
                    "skips the supervised vision phase")
    ap.add_argument("--freeze-vision", action="store_true", help="train only the projector and the LM (as LLaVA)")
    ap.add_argument("--qtype-weights", default="", help="e.g. count=2,position=1.5")
    ap.add_argument("--late-qtype-weights", default="", help="question mix from --late-from on, e.g. position=6")
    ap.add_argument("--late-from", type=float, default=1.0, help="fraction of steps after which the late mix applies")
    for f in fields(B.ToyArch):
        ap.add_argument("--" + f.name.replace("_", "-"), type=int, default=None)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    arch = B.ToyArch(**{f.name: getattr(args, f.name) for f in fields(B.ToyArch) if getattr(args, f.name) is not None})
    prev_report = None
    if args.init_from:
        # continue training a saved checkpoint (second stage); architecture comes from its report
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        with open(os.path.join(args.init_from, "train_report.json")) as f:
            prev_report = json.load(f)
        arch = B.ToyArch(**{f.name: prev_report["arch"][f.name] for f in fields(B.ToyArch)})
        model = LlavaForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
        processor = B.build_processor(arch)  # the same files as a fresh build (the vocabulary is fixed)
        saved = LlavaProcessor.from_pretrained(args.init_from).tokenizer.get_vocab()
        if saved != processor.tokenizer.get_vocab():
            raise SystemExit(f"{args.init_from}: its vocabulary differs from this world's; train from scratch.")
        B.check_consistency(model, processor)
        args.vision_steps = 0
    else:
        model, processor = B.build(arch, seed=args.seed)
    if args.vision_from:  # a self-supervised tower (occam.toy.ssl) replaces the tower's weights
        model.model.vision_tower.load_state_dict(torch.load(args.vision_from, weights_only=True))
        args.vision_steps = 0
    if args.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
        args.aux_weight, args.vision_steps = 0.0, 0  # the auxiliary probe trains the tower: nothing to do
    enc = Encoder(processor)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"arch {arch.to_dict()}  params {n_params/1e6:.2f}M  visual tokens {arch.num_visual_tokens}", flush=True)

    qw, late_qw = parse_weights(args.qtype_weights), parse_weights(args.late_qtype_weights)
    late_step = int(args.late_from * args.steps) if late_qw else None
    stream = TrainStream(args.seed, qw)
    val = heldout_set(60, seed=1)  # progress monitor (disjoint from the final report set: heldout seed 0)

    aux = None
    if args.aux_weight > 0:
        aux = AuxHead(arch.vision_hidden, arch.num_register_tokens, arch.image_size // arch.patch_size)
        model.model.vision_tower.encoder.register_forward_hook(aux.hook)
    decay, no_decay = [], []
    named = list(model.named_parameters()) + ([("aux." + n, p) for n, p in aux.named_parameters()] if aux else [])
    named = [(n, p) for n, p in named if p.requires_grad]
    for n, p in named:
        (no_decay if p.ndim < 2 or "embed" in n or "norm" in n or "register" in n or "cls_token" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    model.train()
    t0 = time.time()
    if args.vision_steps:
        assert aux is not None, "--vision-steps needs the aux loss"
        vt = model.model.vision_tower
        vparams = list(vt.parameters()) + list(aux.parameters())
        vopt = torch.optim.AdamW(vparams, lr=args.vision_lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
        vstream = TrainStream(args.seed + 7919)
        vema = None
        probe = heldout_set(40, seed=2)
        probe_t, probe_pix = aux_targets(probe, arch.patch_size), pixels(probe)
        for vstep in range(args.vision_steps):
            lr = lr_at(vstep, args.vision_steps, args.vision_lr, min(200, args.vision_steps // 10 + 1), 0.1)
            for g in vopt.param_groups:
                g["lr"] = lr
            smp = vstream.next(args.vision_batch)
            vt(pixels(smp))
            l = aux.loss(aux_targets(smp, arch.patch_size))
            vopt.zero_grad(set_to_none=True)
            l.backward()
            torch.nn.utils.clip_grad_norm_(vparams, args.clip)
            vopt.step()
            vema = l.item() if vema is None else 0.98 * vema + 0.02 * l.item()
            if (vstep + 1) % args.log_every == 0:
                with torch.no_grad():
                    vt(probe_pix)
                    sh, co = aux.center_accuracy(probe_t)
                    aux.feats = None
                print(
                    f"vision {vstep+1}/{args.vision_steps} aux {vema:.4f} centre-shape {sh:.3f} centre-colour {co:.3f} "
                    f"{(time.time()-t0)/60:.1f}min",
                    flush=True,
                )
        del vopt
    t_vision = time.time() - t0
    ema = aema = None
    step = 0
    history = []
    for step in range(args.steps):
        if step == late_step:
            stream.set_weights(late_qw)
            print(f"step {step}: question mix now {late_qw}", flush=True)
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        max_obj = W.MAX_OBJECTS
        if args.curriculum > 0 and step < args.curriculum * args.steps:
            max_obj = min(W.MAX_OBJECTS, 2 + int(5 * step / (args.curriculum * args.steps)))
        use_aux = aux is not None and step < args.aux_until * args.steps
        batch = collate(stream.next(args.batch, max_obj, args.turns), enc, patch=arch.patch_size if use_aux else None)
        aux_t = batch.pop("aux_targets", None)
        lm_loss = model(**batch).loss
        loss = lm_loss
        if use_aux:
            a_loss = aux.loss(aux_t)
            loss = loss + args.aux_weight * a_loss
            aema = a_loss.item() if aema is None else 0.98 * aema + 0.02 * a_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], args.clip)
        opt.step()
        ema = lm_loss.item() if ema is None else 0.98 * ema + 0.02 * lm_loss.item()
        if (step + 1) % args.log_every == 0:
            el = time.time() - t0
            print(
                f"step {step+1}/{args.steps} loss {ema:.4f} aux {aema or 0:.4f} gnorm {gn:.2f} lr {lr:.2e} "
                f"maxobj {max_obj} {el/60:.1f}min",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0:
            acc = evaluate_fast(model, enc, val)
            history.append({"step": step + 1, "loss": round(ema, 4), "val": acc})
            print(f"  val {acc}", flush=True)
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            print(f"time limit reached at step {step+1}", flush=True)
            break
    steps_done = step + 1
    train_time = time.time() - t0

    model.eval()
    test = heldout_set(args.eval_per_type, seed=0)
    te = time.time()
    acc = evaluate_generate(model, processor, test)
    print(f"held-out (generate) {acc}  [{time.time()-te:.0f}s]", flush=True)

    os.makedirs(args.out, exist_ok=True)
    if args.dtype == "float16":
        model = model.to(torch.float16)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    report = {
        "command": "python -m occam.toy.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "threads": args.threads,
        "steps": steps_done,
        "batch_size": args.batch,
        "images_seen": steps_done * args.batch + args.vision_steps * args.vision_batch,
        "qa_turns_per_image": args.turns,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "aux_weight": args.aux_weight,
        "aux_until": args.aux_until,
        "curriculum": args.curriculum,
        "turns": args.turns,
        "train_wall_time_s": round(train_time, 1),
        "vision_phase_steps": args.vision_steps,
        "vision_phase_batch": args.vision_batch,
        "vision_phase_wall_time_s": round(t_vision, 1),
        "torch": torch.__version__,
        "arch": arch.to_dict(),
        "n_params": n_params,
        "saved_dtype": args.dtype,
        "image_token_id": model.config.image_token_id,
        "example_prompt": B.prompt_for(processor, val[0].question),
        "heldout_eval": {
            "method": "greedy model.generate(max_new_tokens=2) on chat-template prompts, exact match of first word",
            "n_per_type": args.eval_per_type,
            "seed_space": "world.sample_seed('heldout', 0, i)",
        },
        "heldout_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "history": history,
    }
    prev_time = 0.0
    if prev_report is not None:
        report["init_from"] = args.init_from
        report["previous_stage"] = {k: v for k, v in prev_report.items() if k != "history"}
        prev_time = prev_report.get("total_train_wall_time_s", prev_report["train_wall_time_s"])
    report["total_train_wall_time_s"] = round(prev_time + train_time, 1)
    report["qtype_weights"] = qw
    report["vision_from"] = args.vision_from or None
    report["freeze_vision"] = args.freeze_vision
    if late_qw:
        report["late_qtype_weights"] = {"from_step": late_step, "weights": late_qw}
    with open(os.path.join(args.out, "train_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"saved to {args.out} ({size/1e6:.1f} MB)", flush=True)
    return report


if __name__ == "__main__":
    main()
