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

from .conftest import free_port

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


def run_lmms(root: Path, name: str, model_args: str, limit: int | None = None, processes: int = 1,
             batch_size: int = 1) -> dict:
    """``lmms-eval --model occam`` in a subprocess (under ``accelerate launch`` with ``processes`` CPU processes
    when more than one); returns its results, logged samples, trace rows and run record."""
    assert LMMS_EVAL.exists(), f"lmms-eval is not installed next to {sys.executable} (see tests/requirements*.txt)"
    out = root / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    launch = [str(LMMS_EVAL)]
    if processes > 1:   # accelerate's --cpu launches one process: its launcher with the CPU forced (gloo) instead
        env["ACCELERATE_USE_CPU"] = "1"
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--main_process_port", str(free_port()),
                  "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval"]
    cmd = [*launch, "--model", "occam", "--model_args", f"{model_args},trace_dir={out / 'traces'}",
           "--tasks", toy_task.TASK, "--include_path", str(root / "task"), "--output_path", str(out), "--log_samples",
           "--batch_size", str(batch_size), *(["--limit", str(limit)] if limit else [])]
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
    train split (all items), the calibrated one again with batch size 4 and with 2 processes, the unpruned one
    with 2 processes on 1 item (more processes than requests), and each tiny family under its method (3 items)."""
    calibrated = (f"pretrained=toy,method=occam,target_retention=0.25,calib_task={toy_task.TASK},calib_split=train,"
                  f"calib_n={CALIB},calib_include_path={harness / 'task'}")
    specs = {"none": ("pretrained=toy,method=none", {}), "occam": (calibrated, {}),
             "occam_batch4": (calibrated, {"batch_size": 4}), "occam_2proc": (calibrated, {"processes": 2}),
             "none_2proc_1item": ("pretrained=toy,method=none", {"processes": 2, "limit": 1, "batch_size": 3}),
             **{arch: (f"pretrained={arch},{knobs}", {"limit": 3}) for arch, knobs in FAMILIES.items()}}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_lmms, harness, name, a, **kw) for name, (a, kw) in specs.items()}
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


def same_run(run: dict, reference: dict) -> None:
    """Scores, logged answers, per-sample traces, per-task trace means and calibration all equal."""
    task = toy_task.TASK
    numbers = lambda r: {k: v for k, v in r["results"]["results"][task].items() if k != "alias"}
    assert numbers(run)["exact_match,none"] == numbers(reference)["exact_match,none"]       # the score: exactly
    assert numbers(run) == pytest.approx(numbers(reference))   # its stderr sums the values in another order
    assert run["samples"] == reference["samples"]
    assert run["traces"] == reference["traces"] and len(run["traces"]) == len(reference["traces"]) > 0
    means = lambda r: {k: v for k, v in r["results"]["throughput"].items() if k.startswith("avg_occam_")}
    assert means(run) == pytest.approx(means(reference))
    assert run["run"]["calibration"] == reference["run"]["calibration"]
    assert run["run"]["config"] == reference["run"]["config"]


def test_batch_size_4_equals_batch_size_1(runs):
    assert runs["occam_batch4"]["run"]["batch_size"] == 4
    same_run(runs["occam_batch4"], runs["occam"])


def test_two_processes_equal_one(runs):
    """``accelerate launch --num_processes 2``: each rank answers half, rank 0 calibrates once and shares alpha /
    beta, lmms-eval gathers the scores and the model merges the ranks' traces into one file."""
    run = runs["occam_2proc"]
    assert run["run"]["world_size"] == 2 and run["results"]["config"]["model_args"].startswith("pretrained=toy")
    same_run(run, runs["occam"])
    assert not list((run["out"] / "traces").glob("*.rank*.jsonl"))         # the per-rank files were merged


def test_more_processes_than_requests(runs):
    """2 processes, 1 document: rank 1 answers lmms-eval's padding request, which is neither scored nor traced."""
    run, one = runs["none_2proc_1item"], runs["none"]
    assert run["results"]["results"][toy_task.TASK]["exact_match,none"] == one["samples"][0]["exact_match"]
    assert run["traces"] == one["traces"][:1] and [s["doc_id"] for s in run["samples"]] == [0]


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
    with pytest.raises(ValueError, match="stage2_layer='middle' is invalid: accepted empty \\(auto\\) or an integer"):
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


def test_batches_group_by_generation_kwargs_and_a_bad_request_fails_alone(tmp_path):
    """batch_size 3 over requests of two generation lengths: each group goes to generate_batch in chunks of at
    most 3, answers equal batch size 1 in request order; a request the model rejects (an empty question) inside
    a batch fails alone, with its own message, and the others of its batch are answered; lmms-eval's padding
    requests are answered without running or tracing."""
    from lmms_eval.api.instance import Instance

    from occam.lmms.model import OccamLMM

    items = toy_task.samples(6)["test"]
    docs = [{"image": s.image, "question": s.question} for s in items]
    questions = [s.question for s in items]
    questions[2] = "<image>"                                  # empty once the image tag is dropped
    reqs = [Instance("generate_until", (q, {"max_new_tokens": 2 + i % 2, "until": ["\n\n"]},
                                        lambda d: [d["image"]], i, "toy", "test"), 0,
                     {"task": "toy", "doc_id": i, "repeats": 1}) for i, q in enumerate(questions)]
    pad = Instance("generate_until", reqs[0].args, 0, {"task": "toy", "doc_id": 0, "repeats": 1,
                                                        "__padding_only__": True})
    answers, traces, calls = {}, {}, []
    for bs in (1, 3):
        lm = OccamLMM(pretrained="toy", method="topk", retention=0.3, on_unsupported="skip", batch_size=str(bs),
                      trace_dir=str(tmp_path / f"bs{bs}"))
        lm.task_dict = {"toy": {"test": docs}}
        batch = lm.vlm.generate_batch
        lm.vlm.generate_batch = lambda *a, **k: calls.append((bs, len(a[0]), a[3], "_single" in k)) or batch(*a, **k)
        answers[bs] = [a.text for a in lm.generate_until([*reqs, pad])]
        rows = next((tmp_path / f"bs{bs}").glob("*_toy.jsonl")).read_text().splitlines()
        traces[bs] = sorted(map(json.loads, rows), key=lambda r: r["doc_id"])    # written group by group
    # bs 1: one request a call; bs 3: the even requests (0, 2, 4: 2 fails, so one by one), then the odd ones
    assert [c for c in calls if c[0] == 1] == [(1, 1, 2 + i % 2, True) for i in (0, 2, 4, 1, 3, 5)]
    assert [c for c in calls if c[0] == 3] == [(3, 3, 2, False), *[(3, 1, 2, True)] * 3, (3, 3, 3, False)]
    assert answers[1] == answers[3] and traces[1] == traces[3] and len(traces[3]) == 6   # padding: untraced
    assert answers[3][2] == "" and answers[3][6] == "" and traces[3][2]["skipped"] == \
        "The question is empty: type a question about the image or video."
    cfg = occam.OccamConfig(method="topk", retention=0.3)
    for i in (0, 1, 3, 4, 5):
        expected = lm.vlm.generate(items[i].image, items[i].question, cfg, max_new_tokens=2 + i % 2)
        assert answers[3][i] == expected.text.split("\n\n")[0] == traces[3][i]["text"]
        assert traces[3][i]["final"] == expected.trace.counts["final"] and traces[3][i]["doc_id"] == i
    strict = OccamLMM(pretrained="toy", method="topk", retention=0.3, batch_size=3, trace_dir=str(tmp_path / "e"))
    strict.task_dict = {"toy": {"test": docs}}
    with pytest.raises(ValueError, match=r"cannot answer toy doc 2: The question is empty.*on_unsupported=skip"):
        strict.generate_until(reqs)
    for bad in ("auto", "0", -2, 1.5, True):
        with pytest.raises(ValueError, match=f"batch_size={bad!r} is invalid.*positive integer"):
            OccamLMM(pretrained="toy", batch_size=bad, trace_dir=str(tmp_path))


def test_a_world_without_a_process_group(tmp_path, monkeypatch):
    from occam.lmms.model import OccamLMM

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but torch.distributed is not initialized.*accelerate launch"):
        OccamLMM(pretrained="toy", trace_dir=str(tmp_path))
