"""The settings module par/config.py: generated schema, config checks naming the key's path, help text of
every setting and flag, a torch-free `par --help`, `--config` files, and the flags the workflow passes."""

import argparse
import copy
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from par import cli, config
from par.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def raw():
    """config.yaml as written (a fresh copy per test, so tests can break it)."""
    return yaml.safe_load((ROOT / "config.yaml").read_text())


# -- (a) the committed schema is the generated one ----------------------------------------------------


def test_committed_schema_equals_the_generated_one():
    assert SCHEMA.read_text() == config.schema_yaml(), "run `par config schema --write`"
    assert config.SCHEMA_PATH == SCHEMA  # what `par config schema --write/--check` touches


def test_schema_accepts_config_yaml_and_rejects_what_check_rejects(raw):
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.validate(raw, schema)
    raw["presets"]["tiny"]["train"]["lrr"] = 0.1
    with pytest.raises(jsonschema.ValidationError, match="lrr"):
        jsonschema.validate(raw, schema)


# -- (b, c) config.yaml checks, errors name the key's path --------------------------------------------


def test_config_yaml_passes_the_check(raw):
    cfg = config.check_workflow_config(raw)
    assert cfg.preset == raw["preset"] and set(cfg.presets) == set(raw["presets"])
    tiny = cfg.presets["tiny"]
    assert isinstance(tiny.train, config.TrainSettings) and tiny.train.max_steps == raw["presets"]["tiny"]["train"]["max_steps"]
    assert set(tiny.models) == set(raw["presets"]["tiny"]["models"])


def _breaks(raw, edit):
    bad = copy.deepcopy(raw)
    edit(bad["presets"]["tiny"])
    with pytest.raises(UserError) as e:
        config.check_workflow_config(bad)
    return str(e.value)


def test_unknown_key_names_its_path_and_the_closest_key(raw):
    assert _breaks(raw, lambda t: t["train"].update(lrr=0.1)) == "presets.tiny.train.lrr: unknown; did you mean lr?"
    msg = _breaks(raw, lambda t: t.update(zzzz=1))  # nothing close: the known keys are listed
    assert msg.startswith("presets.tiny.zzzz: unknown; known keys: ") and "models" in msg


@pytest.mark.parametrize("edit,path,words", [
    (lambda t: t["train"].update(max_steps="200"), "presets.tiny.train.max_steps", "expected int, got str '200'"),
    (lambda t: t["train"].update(max_steps=True), "presets.tiny.train.max_steps", "expected int, got bool"),
    (lambda t: t["train"].update(compile="yes"), "presets.tiny.train.compile", "expected bool"),
    (lambda t: t["train"].update(schedule="linear"), "presets.tiny.train.schedule", "'linear' is not one of cosine, constant"),
    (lambda t: t["train"].update(global_batch=0), "presets.tiny.train.global_batch", "0 is below the minimum 1"),
    (lambda t: t["train"].update(dropout=1.5), "presets.tiny.train.dropout", "1.5 is above the maximum 1"),
    (lambda t: t["models"]["par-n4"].update(order="zigzag"), "presets.tiny.models.par-n4.order", "is not one of"),
    (lambda t: t["models"]["par-n4"].update(n=0), "presets.tiny.models.par-n4.n", "below the minimum 1"),
    (lambda t: t["models"]["par-n4"].pop("size"), "presets.tiny.models.par-n4.size", "required"),
    (lambda t: t["data"]["tinyset"].update(size=4), "presets.tiny.data.tinyset.size", "below the minimum 8"),
    (lambda t: t["entropy"].update(references=[[0, "a"]]), "presets.tiny.entropy.references[0][1]", "expected int"),
    (lambda t: t.update(resources={"default": {"gpus": -1}}), "presets.tiny.resources.default.gpus", "below the minimum 0"),
])
def test_bad_value_names_its_path(raw, edit, path, words):
    msg = _breaks(raw, edit)
    assert msg.startswith(path + ": ") and words in msg, msg


def test_unknown_active_preset_is_named(raw):
    with pytest.raises(UserError, match=r"^preset: 'nope' is not defined under presets"):
        config.check_workflow_config({**raw, "preset": "nope"})


# -- (d) help text of every setting and every flag ------------------------------------------------------


def _settings_classes():
    return [c for _, c in inspect.getmembers(config, inspect.isclass)
            if dataclasses.is_dataclass(c) and c.__module__ == config.__name__]


def test_every_setting_has_help():
    classes = _settings_classes()
    assert {"TrainJob", "SampleJob", "Preset", "WorkflowConfig", "ModelEntry"} <= {c.__name__ for c in classes}
    missing = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
               if not str(f.metadata.get("help") or "").strip()]
    assert not missing


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Options of `parser` (and of its sub-commands) whose help is empty, the "(default: …)" suffix not counted."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if isinstance(a, argparse._SubParsersAction):  # listed with each choice's help line
            helps = {c.dest: c.help for c in a._choices_actions}
            out += [f"{path} {name}" for name in a.choices if not str(helps.get(name) or "").strip()]
            for name, sub in a.choices.items():
                out += _undocumented(sub, f"{path} {name}")
            continue
        text = re.sub(r"\s*\(default: .*\)$", "", a.help or "") if a.help != argparse.SUPPRESS else ""
        if not text.strip():
            out.append(f"{path} {'/'.join(a.option_strings) or a.dest}")
    return out


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_of_every_command_has_help(command):
    parser = cli.build_parser(command)
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert top.choices[command].add_help  # a real parser, not the help-only entry `par --help` lists
    assert not _undocumented(top.choices[command], f"par {command}")


def test_flag_help_comes_from_the_settings():
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainJob)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["lr"] == "peak AdamW learning rate (default: 0.0001)"
    assert helps["data"].endswith("(default: required)")
    assert {f.name for f in dataclasses.fields(config.TrainJob)} == set(helps) - {"help"}


# -- (e) `par --help` is torch-free ----------------------------------------------------------------------


def test_par_help_does_not_import_torch():
    code = ("import sys, contextlib, io\n"
            "from par.cli import build_parser, main\n"
            "build_parser().format_help()\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'entropy' in out.getvalue() and 'train' in out.getvalue(), out.getvalue()\n"
            "assert 'torch' not in sys.modules, 'torch imported by par --help'\n"
            "import par.config\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['config', '--help'])\n"
            "    except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported by par.config'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


# -- (f) --config files ----------------------------------------------------------------------------------


def _from_config(tmp_path, text: str, argv=("--data", "tokens", "--out", "run")):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainJob)
    return config.from_args(config.TrainJob, p.parse_args(list(argv)), config_file=str(path)), str(path)


@pytest.mark.parametrize("text,key,words", [
    ("data: d\nout: o\nlrr: 0.1\n", "lrr", "unknown; did you mean lr?"),
    ('data: d\nout: o\nmax_steps: "200"\n', "max_steps", "expected int, got str '200'"),
    ("data: d\nout: o\nschedule: linear\n", "schedule", "is not one of"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, text, key, words):
    with pytest.raises(UserError) as e:
        _from_config(tmp_path, text)
    path = str(tmp_path / "recipe.yaml")
    assert str(e.value).startswith(f"{path}.{key}: ") and words in str(e.value), str(e.value)


def test_config_file_and_flags_combine(tmp_path):
    cfg, _ = _from_config(tmp_path, "data: d\nout: o\nlr: 0.01\nmax_steps: 7\n", ["--max-steps", "9"])
    assert (cfg.data, cfg.out, cfg.lr, cfg.max_steps) == ("d", "o", 0.01, 9)  # flags win over the file
    # a recipe file without the paths, which are given on the command line
    cfg, _ = _from_config(tmp_path, "lr: 0.01\n")
    assert (cfg.data, cfg.out, cfg.lr) == ("tokens", "run", 0.01)
    with pytest.raises(UserError, match=r"^--out is required \(or set 'out' in --config\)$"):
        _from_config(tmp_path, "data: d\n", [])
    p = argparse.ArgumentParser()  # no --config file
    config.add_arguments(p, config.TrainJob)
    with pytest.raises(UserError, match=r"^--data is required \(or set 'data' in --config\)$"):
        config.from_args(config.TrainJob, p.parse_args(["--out", "run"]))


# -- (g) flags the workflow passes ---------------------------------------------------------------------


def test_flags_render_bools_and_sort_keys():
    out = config.flags(config.SampleSettings, {"top_k": 5, "compile": True, "seed": 3},
                       {"cfg_scale": 2.0, "compile": False, "not_a_setting": 1})
    assert out == ["--cfg-scale", "2.0", "--compile", "false", "--seed", "3", "--top-k", "5"]
    assert config.flags(config.TrainSettings, {"ema": True, "dropout": 0, "compile": False}) == \
        ["--compile", "false", "--dropout", "0", "--ema", "true"]
    # and what it renders parses back to the same settings
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainSettings)
    args = p.parse_args(config.flags(config.TrainSettings, {"ema": True, "compile": False, "lr": 0.5}))
    assert (args.ema, args.compile, args.lr) == (True, False, 0.5)


# -- (h) numbers as people write them (YAML 1.2), and `--config` overlays (Snakemake's --configfile) -----


@pytest.mark.parametrize("text", ["2e-3", "2E-3", "+2e-3", "20e-4", "0.002"])
def test_yaml_1_1_string_floats_are_numbers(tmp_path, text):
    assert isinstance(yaml.safe_load(f"lr: {text}")["lr"], str) or text == "0.002"  # what PyYAML gives
    cfg, _ = _from_config(tmp_path, f"lr: {text}\n")
    assert cfg.lr == 0.002
    resources = {"default": {"gpu_mem_gb": "8e1"}}  # written back, so the mapping as written reads a number too
    config.check(config.Preset, {"models": {}, "resources": resources}, "p")
    assert resources["default"]["gpu_mem_gb"] == 80.0
    with pytest.raises(UserError, match=r"lr: expected float, got str '2e-3x'"):
        _from_config(tmp_path, "lr: 2e-3x\n")
    with pytest.raises(UserError, match=r"max_steps: expected int, got str '1e3'"):  # ints stay exact
        _from_config(tmp_path, "max_steps: 1e3\n")


def _plan_args(*argv):
    return cli.build_parser("plan").parse_args(["plan", *argv])


def test_plan_config_overlays_config_yaml_like_snakemake_configfile(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config.yaml is the base, as the Snakefile's configfile
    (tmp_path / "lr.yaml").write_text("presets:\n  paper:\n    train: {lr: 2e-3}\n")
    args = _plan_args("--config", str(tmp_path / "lr.yaml"), "--config", "presets.paper.models.par-L-n4.n=16",
                      "--config", "presets.paper.train.epochs=3")
    cfg, preset = config.load_config(args.config, args.preset)
    assert args.preset == "paper" and preset["train"]["lr"] == 0.002 and preset["train"]["epochs"] == 3
    assert preset["models"]["par-L-n4"] == {"size": "GPT-L", "order": "par", "n": 16}  # merged key by key
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert preset["train"]["global_batch"] == base["presets"]["paper"]["train"]["global_batch"]
    assert cfg["presets"].keys() == base["presets"].keys() and cfg["tables"] == base["tables"]
    assert config.load_config(_plan_args().config, "paper")[0] == base  # no --config: config.yaml itself
    # a bad key is named with the layer that wrote it
    (tmp_path / "bad.yaml").write_text("presets:\n  paper:\n    train: {lrr: 1}\n")
    for arg, name in ((str(tmp_path / "bad.yaml"), str(tmp_path / "bad.yaml")),
                      ("presets.paper.train.lrr=1", "--config presets.paper.train.lrr=1")):
        with pytest.raises(UserError) as e:
            config.load_config(_plan_args("--config", arg).config, "paper")
        assert str(e.value) == f"{name}: presets.paper.train.lrr: unknown; did you mean lr?"
    with pytest.raises(UserError, match=r"^--config preset=tiny: pick the preset with --preset tiny$"):
        config.load_config(["preset=tiny"], "paper")
    with pytest.raises(UserError, match=r"^--config a\.=1: expected a config FILE or KEY=VALUE"):
        config.load_config(["a.=1"], "paper")


def test_par_help_says_what_tables_and_report_write(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Tables 2, 3(a)-(e) and 4 and the verdicts" in out
    assert "report.md + report.html under analysis/<preset>/" in out
