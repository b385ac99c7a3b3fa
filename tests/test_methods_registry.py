"""The method registry: one module per method, no method name compared anywhere else."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import occam
from occam import methods as registry

REPO = Path(__file__).resolve().parents[1]
NAMES = "|".join(map(re.escape, registry.METHODS))
# a method name as one side of ==, != or inside an `in (...)` tuple
COMPARED = re.compile(rf"""(==|!=)\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)|\bin\s*\([^)]*["']({NAMES})["']""")
# the same words where they are not a method: a register source, lmms-eval's model id
NOT_A_METHOD = ('st.get("register_source") == "none"', 'results["config"].get("model") != "occam"')
OWNERS = ("occam/methods/", "occam/config.py", "occam/toy/")    # the registry, the validator, the toy world


def test_no_method_name_is_compared_outside_the_registry():
    hits = []
    for path in sorted([*(REPO / "occam").rglob("*.py"), *(REPO / "app").rglob("*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(OWNERS):
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if COMPARED.search(line) and not any(ok in line for ok in NOT_A_METHOD):
                hits.append(f"{rel}:{no}: {line.strip()}")
    assert not hits, "ask the method (occam.methods) instead of comparing its name:\n" + "\n".join(hits)


def test_registry_lists_are_derived_from_the_modules():
    assert registry.METHODS[0] == registry.FULL and not registry.get(registry.FULL).prunes
    assert registry.PRUNING_METHODS == registry.METHODS[1:]
    assert set(registry.FIXED_BUDGET_METHODS) < set(registry.PRUNING_METHODS)
    assert set(registry.STAGE_LABELS) == set(registry.STAGE_SIDES)
    assert set(registry.vision_stages()) | set(registry.language_stages()) == set(registry.STAGE_SIDES)
    assert occam.METHODS == registry.METHODS


HALF = '''"""Half: the first half of the visual tokens (a throwaway method for the registry test)."""
import torch

from .base import Method
from .common import budget_stage


class Half(Method):
    name = "half"
    label = "First half"
    side = "vision"
    fixed_budget = True
    stages = {"half": "vision"}
    stage_labels = {"half": "Half"}

    def stage1(self, vis, stats, cfg, input_seed: int = 0):
        keep = torch.arange(vis.n) < vis.n // 2
        return keep, vis.embeds, budget_stage("half", None, list(range(vis.n)), None, keep)
'''

PROBE = '''
import torch
import occam
from PIL import Image
from app import backend
from tests.reference import reference_generate

vlm = occam.load("tiny-llava")
img = Image.new("RGB", (96, 80), (200, 40, 40))
res = vlm.generate(img, "what is it", occam.OccamConfig(method="half"), max_new_tokens=3)
n = res.trace.num_visual
keep = torch.arange(n) < n // 2
assert res.trace.stages[0].kept == keep.tolist(), res.trace.stages[0].kept
assert res.token_ids == reference_generate(vlm, img, "what is it", keep, steps=3)[0], "not the reference"
assert "half" in backend.COMPARED_METHODS and "half" in backend.FIXED_BUDGET_METHODS
assert backend.parse_settings({"method": "half"}).config.method == "half"
print("ok", n, res.trace.counts["final"])
'''


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path):
    """Copy the library and the app, add a module and one line to the registry: it runs and the app offers it."""
    for part in ("occam", "app", "tests"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "assets").symlink_to(REPO / "assets")
    (tmp_path / "occam" / "methods" / "half.py").write_text(HALF)
    init = tmp_path / "occam" / "methods" / "__init__.py"
    src = init.read_text()
    line = "REGISTRY: dict[str, Method] = {m.name: m for m in (Full(), OccamToken(), TopK(), FastV(), VisionZip(), Random())}"
    assert line in src
    init.write_text(src.replace(line, "from .half import Half\n" + line.replace("Random()", "Random(), Half()")))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-3000:]
