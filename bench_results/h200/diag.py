"""Where a pruned request's GPU time goes (LLaVA-1.5-7B shapes, bf16): kernel table from torch.profiler,
GPU-busy time vs wall time per step, and the replay time of one graphed segment alone (CUDA events)."""
import sys, time, torch
import occam
from occam import archs
from occam.bench.common import bench_image
from torch.profiler import profile, ProfilerActivity

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
name = sys.argv[2] if len(sys.argv) > 2 else "llava-1.5-7b"
model, proc = archs.build(name, dtype=torch.bfloat16 if dev == "cuda" else torch.float32, device=dev,
                          text_layers=None if dev == "cuda" else 2)
vlm = occam.VLM(model, proc)
img, q = bench_image(640, 480), "What is the red object in the middle of the picture, and what can be seen behind it? Answer briefly."
cfgs = {"none": occam.OccamConfig(method="none"), "visionzip@0.05": occam.OccamConfig(method="visionzip", retention=0.05),
        "topk@0.11": occam.OccamConfig(method="topk", retention=0.11)}
for c in cfgs.values():
    for _ in range(3): vlm.generate(img, q, c, max_new_tokens=1)
for label, c in cfgs.items():
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])) as prof:
        for _ in range(3): r = vlm.generate(img, q, c, max_new_tokens=1)
    print(f"\n##### {label}: timings(ms, last) " + str({k: round(v * 1e3, 2) for k, v in r.timings.items() if isinstance(v, float)}))
    print(prof.key_averages().table(sort_by="cuda_time_total" if dev == "cuda" else "cpu_time_total", row_limit=18, max_name_column_width=60))
seg = vlm.segments
if seg is not None and hasattr(seg, "graphs"):
    for key, g in list(seg.graphs.items())[:6]:
        if g is None: continue
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        for _ in range(3): g["graph"].replay()
        ts = []
        for _ in range(10):
            ev[0].record(); g["graph"].replay(); ev[1].record(); torch.cuda.synchronize(); ts.append(ev[0].elapsed_time(ev[1]))
        ts.sort()
        print(f"graph replay layers {key[0]}..{key[1]-1} at length {key[2]}: median {ts[5]:.2f} ms (min {ts[0]:.2f})")
