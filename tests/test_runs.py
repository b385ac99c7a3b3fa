"""occam.runs: a split through the full and pruned models into a folder (written, read back, resumed,
cancelled), broken folders named, statistics, accuracies equal to ``occam.bench accuracy`` on the same
items, and an lmms-eval ``--log_samples`` folder read with the numbers of its own results file."""
import gzip
import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import occam
from occam import runs
from occam.bench import accuracy, stats
from occam.lmms import toy_task

from .test_lmms_eval import N as LMMS_N
from .test_lmms_eval import harness, run_lmms  # noqa: F401  (the fixture, shared)

N, CALIB = 8, 6
SPEC = runs.Spec(n=N, calib=CALIB, methods=("occam", "topk", "fastv"), retentions=(0.25, 0.11))


@pytest.fixture(scope="module")
def vlm():
    return occam.load("toy")


@pytest.fixture(scope="module")
def run(vlm, tmp_path_factory):
    return runs.execute(SPEC, tmp_path_factory.mktemp("run") / "toy", vlm=vlm, chunk=20)


def test_a_run_folder_holds_every_answer_and_trace(run):
    folder = run.folder
    manifest = json.loads((folder / runs.MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["format"] == runs.FORMAT and run.complete
    assert [k["key"] for k in run.keys] == ["none", "occam@0.25", "topk@0.25", "fastv@0.25", "occam@0.11",
                                            "topk@0.11", "fastv@0.11"]
    assert len(run.samples) == N and len(run.rows) == N * 7 and not run.notes
    assert len({(r["sample"], r["key"]) for r in run.rows}) == N * 7
    tr = run.trace(3, "occam@0.25")
    row = next(r for r in run.rows if r["sample"] == 3 and r["key"] == "occam@0.25")
    assert tr["counts"]["final"] == row["kept"] and tr["config"]["method"] == "occam"
    assert occam.Trace.from_dict(tr).to_dict() == tr
    assert run.image(3).size == (96, 96) and run.samples[3]["qtype"] in manifest["question_types"]
    assert 0 <= run.samples[3]["edge_density"] <= 1 and "n_objects" in run.samples[3]
    rec = runs.sample_record(run, 3, "occam@0.25")
    assert {r["key"] for r in rec["runs"]} == {k["key"] for k in run.keys} and rec["sample"]["question"]


def test_answers_equal_generate_one_by_one(run, vlm):
    """Batched answers (generate_batch, mixed configs) equal the single-request path under the saved configs."""
    from occam.toy import world
    items = world.dataset("heldout", N, seed=0)
    cfgs = {k: occam.OccamConfig(**d) for k, d in run.manifest["configs"].items()}
    for r in run.rows[::5]:
        res = vlm.generate(items[r["sample"]].image, items[r["sample"]].question, cfgs[r["key"]], max_new_tokens=3)
        assert res.text == r["text"] and res.trace.counts["final"] == r["kept"]


def test_accuracies_equal_the_accuracy_benchmark(run, tmp_path):
    rep = accuracy.main(["--n", str(N), "--seeds", "0", "--calib", str(CALIB), "--retentions", "0.25", "0.11",
                         "--methods", "occam", "topk", "fastv", "--out", str(tmp_path / "acc")])
    agg = {k["key"]: k for k in runs.aggregate(run)["keys"]}
    assert agg["none"]["accuracy"] == rep["full"]["accuracy"]
    for r in rep["results"]:
        mine = agg[runs.key_of(r["method"], r["target"])]
        assert mine["accuracy"] == r["accuracy"] and mine["n"] == r["n"]
        assert mine["retention"] == pytest.approx(r["retention"]) and mine["flops_rel"] == pytest.approx(r["flops_rel"])
        assert mine["ci95"] == pytest.approx(r["ci95"])
        assert "".join("1" if x["score"] else "0" for x in sorted(
            (x for x in run.rows if x["key"] == mine["key"]), key=lambda x: x["sample"])) == r["correct"][0]
    # the report itself, opened as a run: the same numbers, its items redrawn from the seeds
    bench = runs.open_run(tmp_path / "acc.json")
    assert bench.kind == "bench" and len(bench.samples) == N
    b = {k["key"]: k for k in runs.aggregate(bench)["keys"]}
    assert {k: b[k]["accuracy"] for k in agg} == {k: agg[k]["accuracy"] for k in agg}
    assert [s["question"] for s in bench.samples] == [s["question"] for s in run.samples]
    assert {k: b[k]["changed"] for k in agg if k != "none"} == \
        {k: sum(1 for r in runs.sample_table(run) if r["key"] == k and r["✓"] != r["full ✓"]) for k in agg if k != "none"}
    assert bench.image(0).size == (96, 96) and bench.trace(0, "none") is None


def test_cancel_then_resume_gives_the_same_run(run, vlm, tmp_path):
    asked = []
    cancel = lambda: asked.append(1) or len(asked) > 9   # noqa: E731 -- 7 budgets resolved, then 2 chunks of 10
    part = runs.execute(SPEC, tmp_path / "r", vlm=vlm, chunk=10, cancel=cancel)
    assert part.manifest["status"] == "cancelled" and not part.complete
    assert len(part.rows) == 20 and "Partial run (cancelled): 20 of 56" in part.notes[0]
    rows = (tmp_path / "r" / runs.ROWS).read_text()
    (tmp_path / "r" / runs.ROWS).write_text(rows + rows.splitlines()[-1][:15])   # a line cut short by a crash
    again = runs.execute(SPEC, tmp_path / "r", vlm=vlm, chunk=10)
    assert again.complete and len(again.rows) == N * 7
    norm = lambda rs: sorted((r["sample"], r["key"], r["text"], r["score"], r["kept"]) for r in rs)  # noqa: E731
    assert norm(again.rows) == norm(run.rows)
    assert again.manifest["configs"] == run.manifest["configs"]
    other = runs.Spec(n=N + 1, calib=CALIB)
    with pytest.raises(runs.RunError, match="holds another run.*choose an empty folder"):
        runs.execute(other, tmp_path / "r", vlm=vlm)


def test_broken_and_partial_folders_say_what_is_missing(run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(runs.RunError, match="not a run: found no manifest.json.*--log_samples.*accuracy report"):
        runs.open_run(tmp_path / "empty")
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.open_run(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(run.folder, broken)
    (broken / runs.SAMPLES).unlink()
    with pytest.raises(runs.RunError, match="partial run: samples.jsonl is missing"):
        runs.open_run(broken)
    shutil.copytree(run.folder, tmp_path / "gaps")
    lines = (tmp_path / "gaps" / runs.ROWS).read_text().splitlines()
    (tmp_path / "gaps" / runs.ROWS).write_text("\n".join(lines[:30]) + "\n")
    (tmp_path / "gaps" / runs.IMAGES / "00001.png").unlink()
    trace = runs.trace_path(tmp_path / "gaps", 0, "topk@0.25")
    trace.unlink()
    gaps = runs.open_run(tmp_path / "gaps")
    assert len(gaps.rows) == 30 and "30 of 56 runs done" in gaps.notes[0] and "00001.png" in gaps.notes[1]
    assert gaps.trace(0, "topk@0.25") is None and gaps.image(1) is None
    from app import runs as app_runs
    comp, _, why = app_runs.saved_comparison(gaps, 0, "topk@0.25")
    assert comp is None and trace.name in why
    (tmp_path / "gaps" / runs.ROWS).write_text("{\"sample\": 0}\nnot json\n{}\n")
    with pytest.raises(runs.RunError, match="line 2 is not JSON"):
        runs.open_run(tmp_path / "gaps")
    report = tmp_path / "acc.json"
    report.write_text(json.dumps({"model": "toy", "n": 2, "seeds": [0], "full": {"accuracy": 1.0},
                                  "results": [{"method": "topk", "target": 0.25, "accuracy": 1.0}]}))
    with pytest.raises(runs.RunError, match="rows 0.25:topk have no per-question 'correct'"):
        runs.open_run(report)
    lmms = tmp_path / "lmms" / "toy"
    lmms.mkdir(parents=True)
    (lmms / "x_results.json").write_text(json.dumps({"config": {"model": "occam", "model_args": "pretrained=toy"},
                                                     "results": {"occam_toy": {"exact_match,none": 1.0}}}))
    with pytest.raises(runs.RunError, match="no \\*_samples_occam_toy.jsonl: run lmms-eval with --log_samples"):
        runs.open_run(tmp_path / "lmms")


def test_statistics():
    ok = [1.0] * 7 + [0.0] * 3
    assert runs.accuracy_interval(ok) == stats.wilson(7, 10)
    lo, hi = runs.accuracy_interval([0.5, 0.75, 1.0, 0.25] * 5)   # fractional scores: bootstrap around the mean
    assert lo < 0.625 < hi and hi - lo < 0.4
    x = np.arange(20.0)
    y = x + np.random.default_rng(0).normal(0, 3, 20)
    c = runs.correlation(x, y)
    assert c["r"] == pytest.approx(np.corrcoef(x, y)[0, 1]) and c["n"] == 20
    z = math.atanh(c["r"])
    assert c["ci95"] == pytest.approx((math.tanh(z - 1.96 / math.sqrt(17)), math.tanh(z + 1.96 / math.sqrt(17))),
                                      abs=1e-4)
    assert runs.correlation([1, 2, 3], [1, 2, 3])["r"] is None                      # n < 4
    assert runs.correlation([1, 1, 1, 1], [1, 2, 3, 4])["r"] is None                # constant
    assert [runs.bucket_of(v) for v in (0.05, 0.11, 0.25, 0.4, 1.0)] == ["0–10%", "10–20%", "20–30%", "30–50%",
                                                                         "50–100%"]


def test_aggregates_table_filters_and_csv(run, tmp_path):
    agg = runs.aggregate(run)
    full = {r["sample"]: r for r in run.rows if r["key"] == "none"}
    for k in agg["keys"][1:]:
        rows = [r for r in run.rows if r["key"] == k["key"]]
        assert k["changed"] == sum(r["text"] != full[r["sample"]]["text"] for r in rows)
        assert k["wrong_only_pruned"] == sum(full[r["sample"]]["score"] > r["score"] for r in rows)
        per = agg["per_type"][k["key"]]
        assert sum(v["n"] for v in per.values()) == N
        c = agg["content"][k["key"]]
        assert c["edge_density"]["n"] == N and set(c["by_background"]) <= {"plain", "gradient", "noise", "texture"}
    occ = [r for r in run.rows if r["key"] == "occam@0.25"]
    assert agg["content"]["occam@0.25"]["n_objects"]["r"] == pytest.approx(
        np.corrcoef([run.samples[r["sample"]]["n_objects"] for r in occ], [r["kept"] for r in occ])[0, 1])
    table = runs.sample_table(run)
    assert len(table) == N * 6
    changed = runs.filter_table(table, changed=True)
    assert all(r["changed"] for r in changed) and len(changed) == sum(k["changed"] for k in agg["keys"][1:])
    sub = runs.filter_table(table, methods=["topk"], types=[run.samples[0]["qtype"]], sort="kept", descending=True)
    assert sub and all(r["method"] == "topk" and r["type"] == run.samples[0]["qtype"] for r in sub)
    assert [r["kept"] for r in sub] == sorted((r["kept"] for r in sub), reverse=True)
    assert all(r["bucket"] == "20–30%" for r in runs.filter_table(table, buckets=["20–30%"]))
    out = runs.to_csv(sub, tmp_path / "t.csv")
    assert out.read_text().splitlines()[0].startswith("sample,type,question") and len(out.read_text().splitlines()) \
        == len(sub) + 1


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match="methods \\['fast'\\] invalid"):
        runs.Spec(methods=("fast",))
    with pytest.raises(ValueError, match="accepted numbers in \\(0, 1\\]"):
        runs.Spec(retentions=(0, 0.5))
    with pytest.raises(ValueError, match="n=0 is invalid"):
        runs.Spec(n=0)
    with pytest.raises(ValueError, match="needs task="):
        runs.Spec(source="lmms")


def test_public_mode_caps_a_run(monkeypatch):
    from app import runs as app_runs
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "1")
    with pytest.raises(ValueError, match="at most 50 items"):
        app_runs.make_spec(n=200)
    with pytest.raises(ValueError, match="toy world only"):
        app_runs.make_spec(source="lmms", n=5, task="x")
    with pytest.raises(ValueError, match="opens runs under"):
        app_runs.open_folder("/")
    spec = app_runs.make_spec(n=20)
    assert app_runs.folder_for(spec, "/etc").parent == app_runs.runs_root()      # a typed folder is ignored


@pytest.fixture(scope="module")
def lmms_folder(harness):  # noqa: F811
    """The toy task run by lmms-eval's CLI into one folder: the full model and topk at 25% (two runs)."""
    root = harness / "both"
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda a: run_lmms(harness, *a), [
            ("both/none", "pretrained=toy,method=none"), ("both/topk", "pretrained=toy,method=topk,target_retention=0.25")]))
    return root, {"none": out[0], "topk target=0.25": out[1]}


def test_an_lmms_eval_folder_reads_as_its_results_file(lmms_folder):
    root, outs = lmms_folder
    run = runs.open_run(root)
    assert run.kind == "lmms" and len(run.samples) == LMMS_N
    agg = {k["key"]: k for k in runs.aggregate(run)["keys"]}
    assert set(agg) == {"none", "topk target=0.25"}
    for key, out in outs.items():
        reported = out["results"]["results"][toy_task.TASK]["exact_match,none"]
        assert agg[key]["accuracy"] == pytest.approx(reported) and agg[key]["reported"]["value"] == reported
        assert agg[key]["retention"] == pytest.approx(out["results"]["throughput"][f"avg_occam_retention@{toy_task.TASK}"])
    items = toy_task.samples(LMMS_N)["test"]
    assert [s["question"] for s in run.samples] == [s.question for s in items]
    assert [s["qtype"] for s in run.samples] == [s.qtype for s in items]     # the dataset's column, read from disk
    assert run.image(0).size == (96, 96) and run.samples[0]["edge_density"] >= 0
    table = runs.sample_table(run)
    assert len(table) == LMMS_N and all(r["kept"] == 17 for r in table)
    assert any("not per-token traces" in n for n in run.notes) and run.trace(0, "none") is None
    traces = outs["topk target=0.25"]["out"] / "traces"
    traces.rename(traces.with_name("moved"))                              # trace_dir gone: a note, not a failure
    try:
        again = runs.open_run(root)
    finally:
        traces.with_name("moved").rename(traces)
    assert any("no trace_dir summaries" in n for n in again.notes)
    assert runs.aggregate(again)["keys"][1]["accuracy"] == agg["topk target=0.25"]["accuracy"]


def test_trace_files_are_gzipped_json(run):
    p = runs.trace_path(run.folder, 0, "none")
    with gzip.open(p, "rt") as f:
        assert json.load(f)["counts"]["retention"] == 1


def test_run_here_on_an_lmms_eval_task_answers_as_lmms_eval_does(lmms_folder, harness, vlm, tmp_path):  # noqa: F811
    """Source "lmms": the task's test split through the same configs gives lmms-eval's own answers and scores."""
    spec = runs.Spec(source="lmms", task=toy_task.TASK, include_path=str(harness / "task"), n=LMMS_N,
                     methods=("topk",), retentions=(0.25,), budget="recommended")
    mine = runs.execute(spec, tmp_path / "lmms_here", vlm=vlm)
    theirs = runs.open_run(lmms_folder[0])
    assert mine.manifest["question_types"] and mine.samples[0]["qtype"] == theirs.samples[0]["qtype"]
    pairs = {"none": "none", "topk@0.25": "topk target=0.25"}
    got = lambda run, key: sorted((r["sample"], r["text"], r["score"], r["kept"]) for r in run.rows  # noqa: E731
                                  if r["key"] == key)
    for a, b in pairs.items():
        assert got(mine, a) == got(theirs, b)
