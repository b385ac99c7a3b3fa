"""``python -m occam.bench premise``: does a model meet the method's premise? Per image and in aggregate.

The method assumes that registers soak up low-information attention, so their attention level is a
useful reference for "evidence beyond a register". This report measures, at the scored vision layer:
the register reference rho against the distribution of patch evidence e (rho / median e, the share of
patches with e >= rho, i.e. kept at alpha = 1), the share of attention the registers receive (against
their uniform share) and how much of the registers' own attention goes to patches; hidden-state norms
(the largest norm / median, the share of tokens at >= kappa x median, what kappa selects); and at
decoder layer K the language-model sinks and the Stage-II reference rho_q / median a. Finally it checks
the prediction that rho rises (relative to patch evidence) on plain images and falls on busy ones.
Images: ``--images <folder>``, or a generated set of plain (one object, plain background) and busy
(six objects on noise / texture) scenes. Writes <out>.md and <out>.json.
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import occam
from occam.evidence import relative_evidence
from occam.inputs import to_rgb
from occam.toy import world

from .common import load_vlm, md_table, median, write_report

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m occam.bench premise", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help='"toy", a hub id, a local folder or an architecture name')
    p.add_argument("--images", default=None, help="folder of images (default: a generated plain + busy set)")
    p.add_argument("--per-group", type=int, default=8, help="generated images per group (plain, busy)")
    p.add_argument("--question", default="what shape is the object?", help="the query for Stage II")
    p.add_argument("--kappa", type=float, default=occam.OccamConfig.kappa, help="emergent-register norm ratio")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output path without extension (default bench_results/premise_<model>)")
    return p.parse_args(argv)


# -- images --------------------------------------------------------------------------------------
def generated_images(per_group: int, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """(name, group, image): plain scenes (one object, plain background) and busy ones (six, noise / texture)."""
    out = []
    for i in range(per_group):
        out.append((f"plain_{i}", "plain", world.render(world.make_scene(seed * 1000 + i, 1, background="plain"))))
    for i in range(per_group):
        bg = ("noise", "texture")[i % 2]
        out.append((f"busy_{i}", "busy", world.render(world.make_scene(seed * 1000 + 500 + i, 6, background=bg))))
    return out


def folder_images(folder: str) -> list[tuple[str, str | None, Image.Image]]:
    """(name, None, image) for every image in ``folder`` (sorted by name); groups come from busyness."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder.")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return [(f.name, None, Image.open(f)) for f in files]


def busyness(image: Image.Image) -> float:
    """Mean absolute grey-level gradient (0-255 scale) at 224x224: how much is going on in the picture."""
    g = np.asarray(to_rgb(image).convert("L").resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return float((np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2)


# -- measurements --------------------------------------------------------------------------------
def vision_premise(vlm: occam.VLM, image: Image.Image, question: str, cfg: occam.OccamConfig) -> dict:
    """Register reference vs patch evidence and hidden-state norms at the scored vision layer."""
    ad = vlm.adapter
    vis = ad.encode(ad.prepare(image, question))
    st = ad.stats(vis, cfg)
    vis.captured = None
    patch = torch.tensor([k == "patch" for k in vis.kinds]) & ~st.registers
    e = st.evidence.float()
    sc = relative_evidence(e, patch, st.registers, "register", st.register_values)
    rho = sc.reference if sc.reference_kind == "register" else None
    med_e = float(e[patch].median()) if patch.any() else None
    valid = torch.isfinite(e)
    reg_share = float(e[st.registers & valid].sum() / e[valid].sum()) if st.registers.any() else None
    reg_att = st.register_attention
    to_patches = float(reg_att[patch].sum() / reg_att[torch.isfinite(reg_att)].sum()) if reg_att is not None else None
    out = {"num_visual": vis.n, "registers": int(st.registers.sum()),
           "register_source": st.register_source if st.registers.any() else "none",
           "rho": rho, "median_e": med_e, "mean_e": float(e[patch].mean()) if patch.any() else None,
           "rho_over_median_e": rho / med_e if rho is not None and med_e else None,
           "kept_at_alpha1": float((e[patch] >= rho).float().mean()) if rho is not None and patch.any() else None,
           "register_attention_share": reg_share,
           "register_uniform_share": float(st.registers.sum() / valid.sum()) if st.registers.any() else None,
           "register_attention_to_patches": to_patches}
    return out | norm_premise(st, cfg.kappa, cfg.max_register_frac)


def norm_premise(st, kappa: float, max_frac: float) -> dict:
    """Hidden-state norms at the scored layer: what an emergent-register rule with ``kappa`` would select."""
    if st.norms is None:
        return {"norm_max_ratio": None, "high_norm_frac": None, "kappa_selects": None, "register_norm_ratio": None}
    norms = st.norms.float()
    cand = torch.isfinite(norms) & ~st.explicit
    ratio = norms / norms[cand].median()
    high = cand & (ratio >= kappa)
    cap = max(1, math.ceil(max_frac * int(cand.sum())))
    explicit = st.explicit & torch.isfinite(norms)
    return {"norm_max_ratio": float(ratio[cand].max()), "high_norm_frac": float(high.sum() / cand.sum()),
            "kappa_selects": min(int(high.sum()), cap),
            "register_norm_ratio": float(ratio[explicit].median()) if explicit.any() else None}


def language_premise(vlm: occam.VLM, image: Image.Image, question: str, vision_registers: int) -> dict:
    """At decoder layer K (Stage II alone, beta = 1): LM sinks found, and rho_q against the query attention a."""
    res = vlm.generate(image, question, occam.OccamConfig(method="occam", stage1=False), max_new_tokens=0)
    s2 = res.trace.stage("stage2")
    scores = torch.tensor([math.nan if v is None else v for v in s2.scores])
    cand = torch.zeros_like(scores, dtype=torch.bool)
    cand[s2.candidates] = True
    regs = torch.zeros_like(cand)
    regs[s2.registers] = True
    med_s = float(scores[cand].median()) if cand.any() else None
    register_ref = s2.reference_kind == "register"
    share = float(scores[regs].sum() / scores[torch.isfinite(scores)].sum()) if register_ref and regs.any() else None
    sinks = max(0, len(s2.registers) - vision_registers) if "sink" in s2.register_source else 0
    return {"layer_K": s2.layer, "lm_sinks": sinks, "stage2_register_source": s2.register_source,
            "rho_q_over_median_a": 1 / med_s if register_ref and med_s else None,
            "stage2_register_query_share": share}


# -- report --------------------------------------------------------------------------------------
def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties), None when either side is constant."""
    if len(x) < 3:
        return None
    rx, ry = (np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (x, y))
    for r, v in ((rx, np.asarray(x)), (ry, np.asarray(y))):
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


KEYS = ("rho", "rho_over_median_e", "kept_at_alpha1", "register_attention_share", "register_attention_to_patches",
        "norm_max_ratio", "high_norm_frac", "register_norm_ratio", "lm_sinks", "rho_q_over_median_a")


def aggregate(rows: list[dict]) -> dict:
    """Medians over images, plain vs busy means, and the plain-vs-busy prediction.

    The prediction is checked where it decides retention: rho relative to the patch evidence (rho / median e)
    higher on plain images than on busy ones and falling with busyness (Spearman < 0). Absolute rho and the
    share of patches kept at alpha = 1 are reported beside it.
    """
    groups = {g: [r for r in rows if r["group"] == g] for g in ("plain", "busy")}
    means = {g: {k: _mean([r[k] for r in rs]) for k in KEYS} for g, rs in groups.items()}
    pairs = [(r["busyness"], r["rho_over_median_e"]) for r in rows if r["rho_over_median_e"] is not None]
    corr = spearman([x for x, _ in pairs], [y for _, y in pairs])
    p, b = means["plain"]["rho_over_median_e"], means["busy"]["rho_over_median_e"]
    holds = None if p is None or b is None or corr is None else bool(p > b and corr < 0)
    return {"median": {k: median(r[k] for r in rows) for k in KEYS}, "group_means": means,
            "n_images": {g: len(rs) for g, rs in groups.items()}, "spearman_busyness_rho": corr,
            "prediction_holds": holds}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model, dtype=args.dtype, device=args.device)
    images = folder_images(args.images) if args.images else generated_images(args.per_group)
    cfg = occam.OccamConfig(kappa=args.kappa)
    rows = []
    with torch.inference_mode():
        for name, group, image in images:
            v = vision_premise(vlm, to_rgb(image), args.question, cfg)
            rows.append({"image": name, "group": group, "busyness": busyness(image), **v,
                         **language_premise(vlm, image, args.question, v["registers"])})
    if args.images:  # a folder: the plainer half against the busier half
        cut = statistics.median(r["busyness"] for r in rows)
        for r in rows:
            r["group"] = "plain" if r["busyness"] <= cut else "busy"
    return {"model": args.model, "family": vlm.family, "num_layers": vlm.num_layers, "question": args.question,
            "kappa": args.kappa, "images": args.images or f"generated ({args.per_group} plain + {args.per_group} busy)",
            "rows": rows, "aggregate": aggregate(rows)}


def _f(x, fmt="{:.3g}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


COLUMNS = (("image", "image", "{}"), ("group", "group", "{}"), ("busyness", "busyness", "{:.1f}"),
           ("registers", "registers", "{}"), ("register_source", "source", "{}"), ("rho", "rho", "{:.3g}"),
           ("median_e", "median e", "{:.3g}"), ("rho_over_median_e", "rho / median e", "{:.2f}"),
           ("kept_at_alpha1", "patches e >= rho", "{:.0%}"),
           ("register_attention_share", "attention to registers", "{:.1%}"),
           ("register_uniform_share", "(uniform)", "{:.1%}"),
           ("register_attention_to_patches", "registers' attention to patches", "{:.0%}"),
           ("norm_max_ratio", "max norm / median", "{:.2f}"), ("high_norm_frac", "norm >= kappa x median", "{:.1%}"),
           ("register_norm_ratio", "explicit registers' norm / median", "{:.2f}"),
           ("lm_sinks", "LM sinks at K", "{}"), ("rho_q_over_median_a", "rho_q / median a", "{:.2f}"))


def markdown(rep: dict) -> str:
    agg = rep["aggregate"]
    head = (f"Premise report: model `{rep['model']}` ({rep['family']}, {rep['num_layers']} decoder layers), "
            f"images: {rep['images']}, Stage-II query: \"{rep['question']}\", kappa = {rep['kappa']:g}.\n\n")
    med, gm = agg["median"], agg["group_means"]
    summary = md_table(["measure", "median over images", "plain (mean)", "busy (mean)"],
                       [[label, _f(med.get(k)), _f(gm["plain"].get(k)), _f(gm["busy"].get(k))]
                        for k, label, _ in COLUMNS if k in KEYS])
    holds = {True: "holds", False: "does not hold", None: "cannot be checked (no register reference or too few images)"}
    p, b = gm["plain"], gm["busy"]
    verdict = (f"\n\nPrediction (rho relative to patch evidence higher on plain images than on busy ones, and "
               f"falling with busyness): **{holds[agg['prediction_holds']]}** -- rho / median e: plain "
               f"{_f(p['rho_over_median_e'])} vs busy {_f(b['rho_over_median_e'])} (means over "
               f"{agg['n_images']['plain']} + {agg['n_images']['busy']} images), Spearman(busyness, rho / median e) = "
               f"{_f(agg['spearman_busyness_rho'], '{:+.2f}')}; absolute rho: plain {_f(p['rho'])} vs busy "
               f"{_f(b['rho'])}; patches at or above rho (kept at alpha = 1): plain {_f(p['kept_at_alpha1'], '{:.0%}')}"
               f" vs busy {_f(b['kept_at_alpha1'], '{:.0%}')}.\n\n")
    per_image = md_table([label for _, label, _ in COLUMNS],
                         [[_f(r[k], fmt) for k, _, fmt in COLUMNS] for r in rep["rows"]])
    return head + summary + verdict + per_image + "\n"


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"


def main(argv=None) -> dict:
    args = parse_args(argv)
    rep = run(args)
    out = Path(args.out or f"bench_results/premise_{slug(args.model)}")
    md = markdown(rep)
    write_report(out, md, rep)
    print(md)
    return rep
