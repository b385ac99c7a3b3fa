"""Self-supervised pre-training of the toy's vision tower with its registers (a small DINOv2).

    python -m occam.toy.ssl --out /tmp/toy-ssl --steps 3000 --threads 1 [--max-minutes 45]

Why this objective. Register tokens were introduced for DINOv2 (Darcet et al., "Vision Transformers
Need Registers", 2024): large towers trained with DINOv2's self-distillation recycle low-information
patches into high-norm "sink" tokens that soak up attention, and added registers take over that role.
The toy's tower is instead trained by supervision (a per-patch auxiliary probe, then the VLM's answers),
and its registers end up *below* a uniform share of attention. So the route tried here is the recipe
under which register sinks were first observed, cut down to the toy: an EMA teacher, two random
resized crops per image, a DINO loss on [CLS] across the views and an iBOT loss on masked patches
(the student sees a mask token, the teacher the patch), teacher centring and sharpening, and a KoLeo
spread term on [CLS]. Colour jitter is left out: colour is what the VLM is asked about.

No loss term reads the registers: the heads see only [CLS] and the patch tokens, the registers are
ordinary extra tokens of the tower. Register attention and norms are only *measured*
(:func:`register_probe`, logged every ``--probe-every`` steps) to see whether sinks emerge on their own.

Writes ``<out>/tower.pt`` (the teacher tower's state dict, as DINO keeps the teacher) and
``<out>/ssl_report.json``; ``python -m occam.toy.train --vision-from <out>/tower.pt`` starts the VLM
phase from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F

from . import build as B
from . import world as W


# --------------------------------------------------------------------------- data


def images(seed: int, start: int, n: int) -> torch.Tensor:
    """(n, 3, S, S) normalised pixels of fresh random scenes (any background, 1-6 objects)."""
    arr = np.stack([np.asarray(W.render(W.make_scene(W.sample_seed("train", seed, start + i))))
                    for i in range(n)])
    return B.pixel_values_from_uint8(arr)


def random_views(x: torch.Tensor, gen: torch.Generator, scale=(0.35, 1.0)) -> torch.Tensor:
    """A random resized crop (area ``scale``, aspect 3/4-4/3) of each image, back at full size, randomly
    flipped left-right."""
    n, _, s, _ = x.shape
    out = torch.empty_like(x)
    r = torch.rand(n, 4, generator=gen)
    for i in range(n):
        area = s * s * (scale[0] + (scale[1] - scale[0]) * r[i, 0].item())
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[i, 1].item())
        w = int(round(min(s, math.sqrt(area * aspect))))
        h = int(round(min(s, math.sqrt(area / aspect))))
        x0, y0 = int(r[i, 2].item() * (s - w + 1)), int(r[i, 3].item() * (s - h + 1))
        crop = x[i : i + 1, :, y0 : y0 + h, x0 : x0 + w]
        out[i] = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def random_masks(n: int, patches: int, gen: torch.Generator, prob=0.5, ratio=(0.1, 0.5)) -> torch.Tensor:
    """(n, patches) bool: with probability ``prob`` an image has a random ``ratio`` of its patches masked."""
    m = torch.zeros(n, patches, dtype=torch.bool)
    for i in range(n):
        if torch.rand(1, generator=gen).item() < prob:
            r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(1, generator=gen).item()
            k = max(1, int(round(r * patches)))
            m[i, torch.randperm(patches, generator=gen)[:k]] = True
    return m


# --------------------------------------------------------------------------- model


class Head(torch.nn.Module):
    """DINO head: MLP -> bottleneck -> L2-normalised -> cosine against K normalised prototypes."""

    def __init__(self, dim: int, hidden: int = 256, bottleneck: int = 64, prototypes: int = 256):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, bottleneck))
        self.prototypes = torch.nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


class Student(torch.nn.Module):
    def __init__(self, tower, head):
        super().__init__()
        self.tower, self.head = tower, head

    def forward(self, pixels, mask=None):
        """(cls logits (B, K), patch logits (B, P, K), cls tokens (B, D)); registers are skipped."""
        h = self.tower(pixel_values=pixels, bool_masked_pos=mask).last_hidden_state
        n_skip = 1 + self.tower.config.num_register_tokens
        return self.head(h[:, 0]), self.head(h[:, n_skip:]), h[:, 0]


def koleo(x: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko spread term (DINOv2): -mean log distance to the nearest neighbour."""
    x = F.normalize(x, dim=-1)
    d = torch.cdist(x, x) + torch.diag(torch.full((x.shape[0],), float("inf")))
    return -torch.log(d.min(-1).values + 1e-8).mean()


def cross_entropy(teacher_p: torch.Tensor, student_logits: torch.Tensor, temp: float) -> torch.Tensor:
    return -(teacher_p * F.log_softmax(student_logits / temp, dim=-1)).sum(-1)


# --------------------------------------------------------------------------- measurement


@torch.no_grad()
def register_probe(tower, pixels: torch.Tensor) -> list[dict]:
    """Per layer: the share of attention the registers receive from the other tokens' queries (mean over
    heads and non-register queries, as the premise report's e; uniform share = R / T) and the registers'
    output norm over the median patch norm. Measurement only."""
    cfg = tower.config
    R = cfg.num_register_tokens
    out = tower(pixel_values=pixels, output_hidden_states=True)
    hs = out.hidden_states
    rows = []
    for i, layer in enumerate(tower.encoder.layer):
        h = layer.norm1(hs[i])
        att = layer.attention
        nh = cfg.num_attention_heads
        q = att.q_proj(h).unflatten(-1, (nh, -1)).transpose(1, 2)
        k = att.k_proj(h).unflatten(-1, (nh, -1)).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, T, T)
        reg = torch.zeros(a.shape[-1], dtype=torch.bool)
        reg[1 : 1 + R] = True
        e = a[:, :, ~reg].mean(dim=(1, 2))  # (B, T): column means over non-register queries
        share = (e[:, reg].sum(-1) / e.sum(-1)).mean().item()
        norms = hs[i + 1].norm(dim=-1)  # (B, T)
        ratio = (norms[:, reg].median(-1).values / norms[:, 1 + R :].median(-1).values).mean().item()
        rows.append({"layer": i, "register_share": round(share, 4), "uniform": round(R / a.shape[-1], 4),
                     "register_norm_ratio": round(ratio, 3)})
    return rows


def probe_images(per_group: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The premise report's generated plain and busy scenes, as pixels."""
    from occam.bench.premise import generated_images

    imgs = generated_images(per_group)
    arr = np.stack([np.asarray(im) for _, _, im in imgs])
    pix = B.pixel_values_from_uint8(arr)
    return pix[:per_group], pix[per_group:]


# --------------------------------------------------------------------------- training


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="images per step (two views each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.04)
    ap.add_argument("--prototypes", type=int, default=256)
    ap.add_argument("--student-temp", type=float, default=0.1)
    ap.add_argument("--teacher-temp", type=float, default=0.04)
    ap.add_argument("--ema", type=float, default=0.99, help="teacher momentum at the start (cosine to 1)")
    ap.add_argument("--koleo", type=float, default=0.1)
    ap.add_argument("--ibot", type=float, default=1.0)
    ap.add_argument("--clip", type=float, default=3.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--probe-every", type=int, default=250)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=0)
    for f in fields(B.ToyArch):
        ap.add_argument("--" + f.name.replace("_", "-"), type=int, default=None)
    return ap.parse_args(argv)


def save(out: str, teacher: Student, report: dict) -> None:
    os.makedirs(out, exist_ok=True)
    torch.save(teacher.tower.state_dict(), os.path.join(out, "tower.pt"))
    with open(os.path.join(out, "ssl_report.json"), "w") as f:
        json.dump(report, f, indent=2)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    arch = B.ToyArch(**{f.name: getattr(args, f.name) for f in fields(B.ToyArch) if getattr(args, f.name) is not None})
    model, _ = B.build(arch, seed=args.seed)  # the same tower (and register init) as the VLM build
    tower = model.model.vision_tower
    del model
    student = Student(tower, Head(arch.vision_hidden, prototypes=args.prototypes))
    teacher = copy.deepcopy(student).requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2 and "embed" not in n and "register" not in n
             and "token" not in n and "prototypes" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in student.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))
    center_c = torch.zeros(args.prototypes)
    center_p = torch.zeros(args.prototypes)
    P = arch.num_patches
    plain, busy = probe_images()
    history, losses, t0, step, ema_loss = [], [], time.time(), 0, None

    def probe(step):
        teacher.eval()
        rows_p, rows_b = register_probe(teacher.tower, plain), register_probe(teacher.tower, busy)
        rec = {"step": step, "minutes": round((time.time() - t0) / 60, 1), "loss": round(ema_loss or 0, 4),
               "plain": rows_p, "busy": rows_b}
        history.append(rec)
        share = " ".join(f"{p['register_share']:.3f}/{b['register_share']:.3f}" for p, b in zip(rows_p, rows_b))
        norm = " ".join(f"{p['register_norm_ratio']:.2f}" for p in rows_p)
        print(f"  probe {step}: register share plain/busy per layer {share} (uniform {rows_p[0]['uniform']}); "
              f"register norm/median (plain) {norm}", flush=True)

    def report():
        return {"command": "python -m occam.toy.ssl " + " ".join(sys.argv[1:] if argv is None else argv),
                "args": vars(args), "arch": arch.to_dict(), "steps": step, "torch": torch.__version__,
                "wall_time_s": round(time.time() - t0, 1), "history": history, "losses": losses}

    probe(0)
    for step in range(1, args.steps + 1):
        frac = (step - 1) / args.steps
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        momentum = 1 - (1 - args.ema) * 0.5 * (1 + math.cos(math.pi * frac))
        x = images(args.seed, (step - 1) * args.batch, args.batch)
        v = torch.cat([random_views(x, gen), random_views(x, gen)])  # (2B, ...): view 1 then view 2
        mask = random_masks(v.shape[0], P, gen)
        with torch.no_grad():
            tc, tp, _ = teacher(v)
            pc = F.softmax((tc - center_c) / args.teacher_temp, dim=-1)
            pp = F.softmax((tp - center_p) / args.teacher_temp, dim=-1)
        sc, sp, cls = student(v, mask)
        n = args.batch
        swap = torch.cat([pc[n:], pc[:n]])  # teacher of the other view
        dino = cross_entropy(swap, sc, args.student_temp).mean()
        ibot = cross_entropy(pp[mask], sp[mask], args.student_temp).mean() if mask.any() else sc.sum() * 0
        kl = koleo(cls[:n]) + koleo(cls[n:])
        loss = dino + args.ibot * ibot + args.koleo * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
            center_c.mul_(0.9).add_(tc.mean(0), alpha=0.1)
            center_p.mul_(0.9).add_(tp.flatten(0, 1).mean(0), alpha=0.1)
        main_loss = (dino + args.ibot * ibot).item()
        losses.append(round(main_loss, 4))
        ema_loss = main_loss if ema_loss is None else 0.95 * ema_loss + 0.05 * main_loss
        if step % args.log_every == 0:
            used = pc.argmax(-1).unique().numel()
            print(f"ssl {step}/{args.steps} loss {ema_loss:.4f} dino {dino.item():.3f} ibot {ibot.item():.3f} "
                  f"koleo {kl.item():.3f} teacher prototypes used {used} lr {lr:.1e} m {momentum:.4f} "
                  f"{(time.time()-t0)/60:.1f}min", flush=True)
        if args.probe_every and step % args.probe_every == 0:
            probe(step)
        if args.save_every and step % args.save_every == 0:
            save(args.out, teacher, report())
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            print(f"time limit reached at step {step}", flush=True)
            break
    if not history or history[-1]["step"] != step:
        probe(step)
    rep = report()
    save(args.out, teacher, rep)
    print(f"saved {args.out}/tower.pt ({rep['wall_time_s']/60:.1f} min)", flush=True)
    return rep


if __name__ == "__main__":
    main()
