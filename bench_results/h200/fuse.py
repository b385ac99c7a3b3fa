"""How much would fusing the decoder layer's small kernels save? LLaVA-1.5-7B decoder layers (bf16, random
weights) at bucket lengths, replayed in CUDA graphs: eager kernels vs torch.compile (inductor) kernels."""
import sys, time, torch
import occam
from occam import archs
from occam.models import graphs

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
N = 4
NAME = sys.argv[2] if len(sys.argv) > 2 else "llava-1.5-7b"
m, p = archs.build(NAME, text_layers=N, dtype=torch.bfloat16 if dev == "cuda" else torch.float32, device=dev)
ad = occam.VLM(m, p, prefill="eager").adapter


def run_layers(h, cos, sin):
    c = graphs._Collect()
    for i in range(len(ad.lm.layers)):
        h = ad.layer(i, h, (cos, sin), c)
    return h, [c.kv[i] for i in range(len(ad.lm.layers))]


def timed(fn, n=30):
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for _ in range(3): fn()
    sync(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3


def graphed(fn, *args):
    if dev != "cuda":
        return lambda: fn(*args)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(*args)
    return g.replay


compiled = torch.compile(run_layers, dynamic=False)
for L in (192, 704):
    h = torch.randn(1, L, m.config.text_config.hidden_size, device=dev, dtype=m.dtype)
    cos, sin = ad.rope(h, torch.arange(L, device=dev)[None])
    with torch.inference_mode():
        ref, _ = run_layers(h, cos, sin)
        t_eager = timed(graphed(run_layers, h, cos, sin))
        t0 = time.time(); out, _ = compiled(h, cos, sin); t_compile = time.time() - t0
        t_comp = timed(graphed(compiled, h, cos, sin))
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"L={L}: per decoder layer, eager kernels {t_eager / N:.3f} ms, compiled {t_comp / N:.3f} ms "
          f"({t_eager / t_comp:.2f}x); compile {t_compile:.0f} s; rel. diff {err:.2e}", flush=True)
