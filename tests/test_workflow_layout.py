"""par/workflow/ mirrors the rule files: each `workflow/rules/<stage>.smk` names, in its header, the module whose
class builds its arguments, and everything it reads from `experiment` is there or on the shared `Preset`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "workflow" / "rules"
PKG = ROOT / "par" / "workflow"
STAGES = ["data", "video", "train", "sample", "evaluate", "entropy", "report"]


def _defined(module: str, cls: str) -> set[str]:
    """Methods and properties of `cls` in par/workflow/<module>.py, and the attributes its `__init__` sets."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    names = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    init = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    names |= {t.attr for n in init for t in ast.walk(n)
              if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)}
    return names


def _adapters() -> dict[str, str]:
    """common.smk's input/params functions → the `experiment` method each one calls."""
    text = (RULES / "common.smk").read_text()
    adapter = r'^def (\w+)\(wildcards\):\n(?:    """[^\n]*"""\n)?    return [^\n]*?experiment\.(\w+)\('
    return dict(re.findall(adapter, text, re.M))


def test_each_rule_file_leads_to_the_module_that_builds_its_arguments():
    shared = _defined("preset", "Preset")
    adapters = _adapters()
    assert {"train_args", "sample_args", "fetch_args", "entropy_map_args", "tokens",
            "training_images"} <= set(adapters)
    for stage in STAGES:
        text = (RULES / f"{stage}.smk").read_text()
        head = re.search(r"^# Its arguments: par/workflow/(\w+)\.py \((\w+)\)", text, re.M)
        assert head, f"{stage}.smk: no header naming its module"
        module, cls = head.groups()
        own = _defined(module, cls)
        used = set(re.findall(r"\bexperiment\.(\w+)", text))
        used |= {adapters[f] for f in adapters if re.search(rf"(?<![.\w]){f}\b(?!\s*=)", text)}
        stray = sorted(used - own - shared)
        assert not stray, f"{stage}.smk reads {stray}, neither in {module}.py's {cls} nor on preset.py's Preset"


def test_a_stage_class_builds_alone_and_agrees_with_experiment():
    from par.workflow import Experiment
    from par.workflow.analysis import AnalysisArgs
    from par.workflow.data import DataArgs
    from par.workflow.evaluate import EvaluateArgs
    from par.workflow.train import TrainArgs
    from par.workflow.video import VideoArgs

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["preset"] = "tiny"
    e = Experiment(cfg)
    run = e.image_runs[0]
    assert TrainArgs(cfg).train_args(run) == e.train_args(run)
    assert EvaluateArgs(cfg).sample_args(run) == e.sample_args(run)
    assert DataArgs(cfg).tokenize_args() == e.tokenize_args()
    assert VideoArgs(cfg).prepare_video_args("test") == e.prepare_video_args("test")
    assert AnalysisArgs(cfg).entropy_increase_args() == e.entropy_increase_args()


def test_workflow_package_imports_no_torch():
    code = "import sys, par.workflow; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
