"""lmms-eval end to end, offline: its own CLI finds ``--model occam`` through the pyproject entry point and
runs the toy model and a tiny model of each family on a local toy-world task. The scores equal what
``occam.bench accuracy`` computes on the same items, every answer and trace summary equals a direct
``vlm.generate``, and the table script turns the results into the method x benchmark table."""
import json
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import occam
from occam.bench import accuracy, table
from occam.lmms import args as margs
from occam.lmms import toy_task

REPO = Path(__file__).resolve().parents[1]
N, CALIB = 12, 4
LMMS_EVAL = Path(sys.executable).with_name("lmms-eval")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A folder with the toy task and a dist-info that declares pyproject's entry points (as `pip install` would)."""
    root = tmp_path_factory.mktemp("lmms")
    toy_task.write(root / "task", n=N, calib=CALIB)
    info = root / "site" / "occam_token-0.0.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: occam-token\nVersion: 0.0.0\n")
    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    info.joinpath("entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) for group, items in eps.items()))
    return root


def run_lmms(root: Path, name: str, model_args: str, limit: int | None = None) -> dict:
    """``lmms-eval --model occam`` in a subprocess; returns its results, logged samples, trace rows and run record."""
    assert LMMS_EVAL.exists(), f"lmms-eval is not installed next to {sys.executable} (see tests/requirements*.txt)"
    out = root / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [str(LMMS_EVAL), "--model", "occam", "--model_args", f"{model_args},trace_dir={out / 'traces'}",
           "--tasks", toy_task.TASK, "--include_path", str(root / "task"), "--output_path", str(out), "--log_samples",
           *(["--limit", str(limit)] if limit else [])]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0 and list(out.rglob("*_results.json")), proc.stdout[-3000:] + proc.stderr[-6000:]
    (res_file,) = out.rglob("*_results.json")
    (samples_file,) = out.rglob(f"*_samples_{toy_task.TASK}.jsonl")
    (trace_file,) = (out / "traces").glob(f"*_{toy_task.TASK}.jsonl")
    (run_file,) = (out / "traces").glob("*_run.json")
    read = lambda f: [json.loads(line) for line in f.read_text().splitlines()]
    by_doc = lambda rows: sorted(rows, key=lambda r: r["doc_id"])
    return {"results": json.loads(res_file.read_text()), "samples": by_doc(read(samples_file)),
            "traces": by_doc(read(trace_file)), "run": json.loads(run_file.read_text()), "out": out}


def check_against_direct(vlm, run: dict, cfg: occam.OccamConfig, items: list) -> None:
    """Every logged answer and trace summary equals a direct generate() under ``cfg`` on the same item."""
    assert [s["doc_id"] for s in run["samples"]] == [t["doc_id"] for t in run["traces"]] == list(range(len(items)))
    for item, sample, tr in zip(items, run["samples"], run["traces"]):
        res = vlm.generate(item.image, item.question, cfg, max_new_tokens=3)
        text = res.text.split("\n\n")[0]                      # the task's default stop string
        assert sample["filtered_resps"] == text == tr["text"]
        assert sample["exact_match"] == float(text.strip().lower() == item.answer)
        assert {k: tr[k] for k in res.trace.counts} == res.trace.counts
        assert (tr["prefill_flops"], tr["prefill_flops_full"]) == (res.trace.flops["prefill"],
                                                                 res.trace.flops["prefill_full"])
        assert tr["retention"] == pytest.approx(tr["final"] / tr["visual"]) and 0 < tr["flops_ratio"] <= 1
    thr = run["results"]["throughput"]                         # per-task means, in lmms-eval's own results file
    mean = sum(t["retention"] for t in run["traces"]) / len(run["traces"])
    assert thr[f"avg_occam_retention@{toy_task.TASK}"] == pytest.approx(mean)


FAMILIES = {  # each family under another method, config knobs given as lmms-eval model args
    "tiny-llava": "method=topk,target_retention=0.25,stage_split=0.7",
    "tiny-llava-next": "method=fastv,retention=0.3,fastv_layer=1",
    "tiny-qwen2.5-vl": "method=visionzip,target_retention=0.25",
    "tiny-qwen3-vl": "method=occam,alpha=0.8,beta=0.9,stage1=false,keep_registers=none,stage2_layer=2",
}


@pytest.fixture(scope="module")
def runs(harness):
    """All harness runs, two at a time: the toy model unpruned and under occam calibrated to 25% on the task's
    train split (all items), and each tiny family under its method (3 items)."""
    calibrated = (f"pretrained=toy,method=occam,target_retention=0.25,calib_task={toy_task.TASK},calib_split=train,"
                  f"calib_n={CALIB},calib_include_path={harness / 'task'}")
    specs = {"none": ("pretrained=toy,method=none", None), "occam": (calibrated, None),
             **{arch: (f"pretrained={arch},{knobs}", 3) for arch, knobs in FAMILIES.items()}}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_lmms, harness, name, a, limit) for name, (a, limit) in specs.items()}
        return {name: f.result() for name, f in futures.items()}


def test_toy_scores_equal_the_accuracy_benchmark(runs):
    vlm = occam.load("toy")
    items = toy_task.samples(N, calib=CALIB)
    cfg = vlm.calibrate([(s.image, s.question) for s in items["train"]], 0.25, occam.OccamConfig(method="occam"))
    calib = runs["occam"]["run"]["calibration"]
    assert (calib["task"], calib["split"], calib["n"], calib["target"]) == (toy_task.TASK, "train", CALIB, 0.25)
    assert (calib["alpha"], calib["beta"]) == pytest.approx((cfg.alpha, cfg.beta))
    for name, c in (("none", occam.OccamConfig(method="none")), ("occam", cfg)):
        run = runs[name]
        expected = accuracy.summarize(accuracy.evaluate(vlm, items["test"], c), None)["accuracy"]
        assert run["results"]["results"][toy_task.TASK]["exact_match,none"] == pytest.approx(expected)
        assert expected > 0.5                                 # the toy model answers; not a 0 == 0 comparison
        check_against_direct(vlm, run, c, items["test"])
    assert all(t["retention"] == 1 for t in runs["none"]["traces"])
    assert all(t["final"] < t["visual"] for t in runs["occam"]["traces"])


def test_table_from_the_harness_results(runs, tmp_path):
    rep = table.main([str(runs["none"]["out"]), str(runs["occam"]["out"]), "--out", str(tmp_path / "t")])
    rows = {r["label"]: r for r in rep["rows"]}
    assert list(rows) == ["none", "occam target=0.25"] and rep["tasks"] == [toy_task.TASK]
    acc = {k: runs[k]["results"]["results"][toy_task.TASK]["exact_match,none"] for k in ("none", "occam")}
    occ = rows["occam target=0.25"]
    assert occ["tasks"][toy_task.TASK]["relative"] == pytest.approx(acc["occam"] / acc["none"])
    assert occ["avg_retention"] == pytest.approx(
        sum(t["retention"] for t in runs["occam"]["traces"]) / N)
    assert rows["none"]["avg_relative"] == 1 and rows["none"]["avg_retention"] == 1
    md = (tmp_path / "t.md").read_text()
    assert f"{toy_task.TASK} (exact_match)" in md and "| toy | occam target=0.25 |" in md
    assert json.loads((tmp_path / "t.json").read_text())["rows"][1]["label"] == "occam target=0.25"


@pytest.mark.parametrize("arch", FAMILIES)
def test_tiny_families_through_the_harness(runs, arch):
    run = runs[arch]
    knobs, other = margs.split_args(margs.parse(FAMILIES[arch]))
    if "target_retention" in other:
        knobs["retention"] = float(other["target_retention"])
    cfg = occam.OccamConfig(**knobs)
    assert run["run"]["config"] == cfg.to_dict() and run["run"]["family"] == occam.load(arch).family
    check_against_direct(occam.load(arch), run, cfg, toy_task.samples(3)["test"])


# -- model args and the lmms-eval model class, in process --------------------------------------------------
def test_every_config_field_reads_from_its_text():
    default = occam.OccamConfig()
    for name in margs.config_types():
        value = getattr(default, name)
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert margs.coerce(name, text) == value
    knobs, other = margs.split_args({"method": "topk", "retention": 0.25, "stage2_layer": "none", "alpha": 1,
                                     "stage1": "false", "keep_registers": "none", "pretrained": "toy"})
    assert knobs == {"method": "topk", "retention": 0.25, "stage2_layer": None, "alpha": 1.0, "stage1": False,
                     "keep_registers": "none"} and other == {"pretrained": "toy"}
    with pytest.raises(ValueError, match="Unknown model arg.*alpah"):
        margs.split_args({"alpah": 1.0})
    with pytest.raises(ValueError, match="stage2_layer='middle'.*int or None"):
        margs.coerce("stage2_layer", "middle")
    assert margs.label(margs.parse("pretrained=x,method=occam,stage1=False,target_retention=0.11")) == \
        "occam stage1=False target=0.11"


def test_model_errors_a_person_can_act_on(tmp_path):
    from lmms_eval.api.instance import Instance

    from occam.lmms.model import OccamLMM

    with pytest.raises(ValueError, match="needs calib_task"):
        OccamLMM(pretrained="toy", target_retention=0.25, trace_dir=str(tmp_path))
    with pytest.raises(ValueError, match="method=none keeps every token"):
        OccamLMM(pretrained="toy", method="none", target_retention=0.25, trace_dir=str(tmp_path))
    with pytest.raises(ValueError, match="OccamConfig.method='fast' is invalid"):
        OccamLMM(pretrained="toy", method="fast", trace_dir=str(tmp_path))
    lm = OccamLMM(pretrained="toy", method="none", trace_dir=str(tmp_path))
    req = Instance("loglikelihood", ("ctx", "A"), 0, {"task": "seedbench_ppl", "doc_id": 0, "repeats": 1})
    with pytest.raises(NotImplementedError, match="generation only.*seedbench_ppl"):
        lm.loglikelihood([req])
    assert json.loads(next(tmp_path.glob("*_run.json")).read_text())["config"]["method"] == "none"


def test_pyproject_scripts_and_entry_points_resolve():
    import importlib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *project["entry-points"]["lmms_eval.models"].values()]
    for target in targets:
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target
    manifest = importlib.import_module("occam.lmms").manifest()
    module, cls = manifest.simple_class_path.rsplit(".", 1)
    from lmms_eval.api.model import lmms
    assert manifest.model_id == "occam" and issubclass(getattr(importlib.import_module(module), cls), lmms)


def test_documents_without_one_image(tmp_path):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from occam.lmms.model import OccamLMM

    image = Image.new("RGB", (96, 96), "red")
    docs = [{"frames": [image, image]}, {"frames": [image]}]
    reqs = [Instance("generate_until", ("what color is the circle?", {"max_new_tokens": 3}, lambda d: d["frames"], i,
                                        "frames", "test"), 0, {"task": "frames", "doc_id": i, "repeats": 1})
            for i in range(2)]
    strict = OccamLMM(pretrained="toy", method="none", trace_dir=str(tmp_path / "strict"))
    strict.task_dict = {"frames": {"test": docs}}
    with pytest.raises(NotImplementedError, match="frames doc 0 has 2 visual.*on_unsupported=skip"):
        strict.generate_until(reqs)
    lenient = OccamLMM(pretrained="toy", method="none", on_unsupported="skip", trace_dir=str(tmp_path / "skip"))
    lenient.task_dict = {"frames": {"test": docs}}
    answers = lenient.generate_until(reqs)
    assert answers[0].text == "" and answers[1].text == lenient.vlm.generate(image, reqs[1].args[0],
                                                                             lenient.config, 3).text
    rows = [json.loads(line) for line in next((tmp_path / "skip").glob("*_frames.jsonl")).read_text().splitlines()]
    assert rows[0]["skipped"] == "2 visual(s) (Image, Image)" and rows[1]["retention"] == 1
