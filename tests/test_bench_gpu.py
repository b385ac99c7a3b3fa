"""The GPU run's entry points, on what a CPU can check: the plan, the runner (on the summary step), the summary
of the recorded H200 reports, and the diagnose / fusion scripts on a tiny model (no timing assertions)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from occam.bench import __main__ as dispatcher
from occam.bench import diagnose, fusion, gpu, summary

H200 = Path(__file__).resolve().parents[1] / "bench_results" / "h200"


def _blocks(text: str) -> dict[str, list[str]]:
    """A summary's blocks keyed by their header without the file name (the recorded files were renamed)."""
    out = {}
    for block in text.strip("\n").split("\n\n"):
        head, *rows = block.split("\n")
        out[head.split(": ", 1)[1]] = rows
    return out


def test_summary_reproduces_the_recorded_h200_summary():
    text = summary.summary(summary.report_paths([str(H200)]))
    recorded = (H200 / "summary.txt").read_text()
    assert _blocks(text) == _blocks(recorded)
    assert len(_blocks(text)) == len(list(H200.glob("speed_*.json"))) == 6


def test_summary_names_a_folder_without_reports(tmp_path):
    with pytest.raises(ValueError, match="holds no speed_"):
        summary.report_paths([str(tmp_path)])
    with pytest.raises(ValueError, match="neither a speed report"):
        summary.report_paths([str(tmp_path / "absent.json")])


def test_dry_run_prints_the_whole_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert gpu.main(["--dry-run", "--out", str(out)]) == []
    text = capsys.readouterr().out
    assert not out.exists()
    for name in ("gputests", "speed_llava15", "speed_next", "speed_qwen25", "speed_qwen3", "speed_qwen25_1280x960",
                 "speed_qwen25_video16", "diagnose", "fusion", "summary"):
        assert f"\n{name} " in text
    for model in gpu.REAL.values():
        assert f"--model {model} " in text
    assert "-m gpu tests/test_engine.py" in text and "--dtype bfloat16" in text
    assert ".gpu/" not in text and ".whl" not in text   # reads only the checkout


def test_cpu_plan_uses_the_tiny_architectures():
    steps = gpu.plan(Path("o"), "cpu")
    commands = " ".join(s.command() for s in steps)
    assert all(f"--model {m} " in commands for m in gpu.TINY.values())
    assert not any(f"--model {m} " in commands for m in gpu.REAL.values())
    assert "--dtype float32" in commands and "bfloat16" not in commands
    with pytest.raises(ValueError, match="accepted 'cuda' or 'cpu'"):
        gpu.plan(Path("o"), "tpu")


def test_unknown_step_is_named(tmp_path):
    with pytest.raises(SystemExit, match="Unknown step.*bogus.*accepted gputests"):
        gpu.main(["--only", "bogus", "--out", str(tmp_path)])


def test_runner_runs_a_step_and_reports_a_failing_one(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for f in H200.glob("speed_*.json"):
        shutil.copy(f, out)
    done = gpu.main(["--device", "cpu", "--only", "summary", "--out", str(out)])
    assert [d["step"] for d in done] == ["summary"] and done[0]["rc"] == 0
    assert _blocks((out / "summary.txt").read_text()) == _blocks((H200 / "summary.txt").read_text())
    assert "torch" in (out / "env.txt").read_text()
    empty = tmp_path / "empty"
    with pytest.raises(SystemExit) as e:
        gpu.main(["--device", "cpu", "--only", "summary", "--out", str(empty)])
    assert e.value.code == 1
    assert "holds no speed_*.json" in (empty / "summary.txt").read_text()
    assert "failed: summary" in capsys.readouterr().out


def test_dispatcher_knows_the_gpu_commands(monkeypatch):
    seen = {}
    monkeypatch.setattr(summary, "main", lambda argv: seen.setdefault("argv", argv))
    assert dispatcher.main(["summary", str(H200)]) == 0
    assert seen["argv"] == [str(H200)]
    for name in ("gpu", "diagnose", "fusion", "summary"):
        assert name in dispatcher.COMMANDS


@pytest.mark.parametrize("prefill", ["padded", "eager"])
def test_diagnose_on_a_tiny_model(prefill, capsys):
    report = diagnose.main(["--model", "tiny-llava", "--device", "cpu", "--dtype", "float32", "--prefill", prefill,
                            "--reps", "1", "--warmup", "0", "--lengths", "40", "--rows", "3", "--image-size", "96x72"])
    text = capsys.readouterr().out
    assert [f"##### {label}" in text for label in diagnose.CONFIGS] == [True] * 3
    assert [(r["length"], r["path"]) for r in report["layers"]] == [(40, prefill)]
    assert report["layers"][0]["min_ms"] <= report["layers"][0]["median_ms"]


def test_fusion_on_a_tiny_model_without_compile(capsys):
    rows = fusion.main(["--model", "tiny-qwen2.5-vl", "--device", "cpu", "--dtype", "float32", "--layers", "1",
                        "--lengths", "16", "--reps", "1", "--no-compile"])
    assert [r["length"] for r in rows] == [16] and rows[0]["eager_ms_per_layer"] > 0
    assert "compiled" not in rows[0] and "L=16: per decoder layer" in capsys.readouterr().out
