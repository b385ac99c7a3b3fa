import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/speed_*.json")):
    d = json.load(open(f))
    print(f"\n{f.split('/')[-1]}: {d['model']} prompt {d['prompt_tokens']} vis {d['visual_tokens']} hf {d['hf_forward_s']['median']*1e3:.1f}ms none/hf {d['none_over_hf']:.2f}")
    print("label kept prefill scoring ttft | meas× roof× meas/roof ttft× score%")
    for v in d["variants"]:
        t = v["timings"]; g = lambda k: t[k]["median"] * 1e3 if t.get(k) and t[k].get("median") is not None else float("nan")
        m = v.get("measured_prefill_speedup") or {}
        tt = v.get("ttft_speedup") or {}
        print(f"{v['label']:15s} {v['counts']['final']:5d} {g('prefill_s'):6.1f} {g('scoring_s'):5.2f} {v['ttft_s']['median']*1e3:6.1f} | "
              f"{(m.get('median') or 1):5.2f} {(v.get('roofline_ideal_prefill_speedup') or 1):5.2f} {(v.get('measured_over_roofline') or 1)*100:4.0f}% "
              f"{(tt.get('median') or 1):5.2f} {(v.get('scoring_share_of_full_prefill') or 0)*100:5.1f}%")
