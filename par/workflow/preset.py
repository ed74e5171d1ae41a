"""The active preset, checked once, and what more than one rule file reads from it.

`Preset` is the base of every stage's argument builders (`par/workflow/<stage>.py`) and of `Experiment`, which
composes them. Building it checks the config, all in one place (`par/workflow/checks.py`). It holds what the
stages share: the runs and their image or video half, the files one stage writes and another reads (checkpoints,
token manifests, tokenizers, FID statistics), and each stage's scheduler resources. A stage module reads only
this class, never another stage's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from par.config import check_workflow_config
from par.workflow.checks import check_inputs, check_preset, user_inputs

CONFIG_FILE_NAME = "workflow-config.yaml"


def quoted(args: list) -> str:
    """An argument list as one shell-quoted string."""
    return shlex.join(str(a) for a in args)


def file_name(url: str) -> str:
    """The name a downloaded file is stored under (the last part of its URL)."""
    return url.rsplit("/", 1)[-1]


# Params functions: Snakemake calls them with the job's wildcards and input/output files, so a folder argument is
# derived from the files the rule declares (never a second, hard-coded copy of their path).

def input_folder(wildcards, input) -> str:  # noqa: A002 — Snakemake passes it by this name
    """The folder of a job's first input file (e.g. the token folder of `tokens/manifest.json`)."""
    return os.path.dirname(input[0])


def results_folder(wildcards, input) -> str:  # noqa: A002
    """`<results>/<preset>`: the folder of the job's `config` input (`<results>/<preset>/workflow-config.yaml`)."""
    return os.path.dirname(input.config)


def output_folder(wildcards, output) -> str:
    """The folder of a job's first output file (the folder a command writes into)."""
    return os.path.dirname(output[0])


class Preset:
    """The active preset of a workflow config, checked: its paths, models and runs, and the files the stages share."""

    def __init__(self, config: dict):
        self.config = json.loads(json.dumps(config))  # plain dicts and lists (Snakemake may hand a subclass)
        self.settings = check_workflow_config(self.config)  # every key, type and value (par.config)
        self.preset_name = self.settings.preset
        self.preset = self.settings.presets[self.preset_name]  # checked, defaults filled in
        self.written = self.config["presets"][self.preset_name]  # as written: flags come from the keys given
        self.results = f"{self.settings.results}/{self.preset_name}"
        self.analysis = f"{self.settings.analysis}/{self.preset_name}"
        self.models = sorted(self.written["models"])
        check_preset(self)  # what spans sections: trained_as, data sources, released checkpoints
        # a run = one trained instance of a model: `<model>/s<k>`, k over the entry's seeds (its `trained_as`'s)
        self.runs = [f"{m}/s{k}" for m in self.models for k in range(self.seeds(m))]
        # the video half (Table 4): models with `modality: video` train on the tokens of the `video` section
        self.video_models = [m for m in self.models if self.is_video(m)]
        self.image_models = [m for m in self.models if not self.is_video(m)]
        self.video_runs = [r for r in self.runs if self.is_video(self.split_run(r)[0])]
        self.image_runs = [r for r in self.runs if r not in self.video_runs]
        # held-out NLL once per trained model: an entry `trained_as` another shares its weights, so it reads that
        # entry's NLL files (`par.analysis.tables.read_run`) instead of scoring the same checkpoint again
        scored = {self.preset.models[m].trained_as or m for m in self.models if self.preset.models[m].score_nll}
        self.nll_runs = [r for r in self.runs if self.split_run(r)[0] in scored
                         and not self.preset.models[self.split_run(r)[0]].trained_as
                         and (self.preset.data.source != "none" or r in self.video_runs)]
        self.tables = sorted(self.settings.tables)
        self.config_file = f"{self.results}/{CONFIG_FILE_NAME}"

    def user_inputs(self) -> list[tuple[str, str, str]]:
        """(config key, path, kind) of every file or folder the user supplies and the DAG needs."""
        return user_inputs(self)

    def check_inputs(self, dry_run: bool = False) -> list[str]:
        """The user-supplied paths and own images, checked when the DAG is built (see `checks.check_inputs`)."""
        return check_inputs(self, dry_run)

    def _section(self, name: str) -> dict:
        return self.written.get(name) or {}

    def _entry(self, model: str) -> dict:
        return self.written["models"][model]

    # ---------------------------------------------------------------------------------------- the config itself

    def config_text(self) -> str:
        """The effective config (after every override) as YAML: what `par tables/report --config` read."""
        import yaml

        return yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=120)

    def write_config(self) -> bool:
        """Write `<results>/<preset>/workflow-config.yaml` when its content changed (atomically), so that the
        rules reading it rerun exactly when the configuration did. Returns whether it was written."""
        from par.io import write_text

        path, text = Path(self.config_file), self.config_text()
        if path.is_file() and path.read_text() == text:
            return False
        write_text(path, text)
        return True

    # ---------------------------------------------------------------------------------------- what the preset has

    @property
    def has_images(self) -> bool:
        """Whether the preset has images (and so tokens, an entropy analysis, NLL); not for `source: none`."""
        return self.preset.data.source != "none"

    @property
    def has_video(self) -> bool:
        return bool(self.video_models)

    @property
    def uses_classifier(self) -> bool:
        return self.preset.evaluate.classifier and not self.reference_stats() and bool(self.image_models)

    # ---------------------------------------------------------------------------------------- runs

    def is_video(self, model: str) -> bool:
        """Whether `model` generates video (its entry, or the entry it is `trained_as`, says modality: video)."""
        entry = self.preset.models[model]
        return "video" in (entry.modality, self.preset.models[entry.trained_as].modality if entry.trained_as else "")

    def seeds(self, model: str) -> int:
        target = self.preset.models[model].trained_as
        return self.preset.models[target or model].seeds

    @staticmethod
    def split_run(run: str) -> tuple[str, int]:
        """`<model>/s<k>` → (model, k)."""
        model, _, k = run.rpartition("/s")
        return model, int(k)

    def _seeded(self, section: str, run: str) -> dict:
        """Run k of a model trains and samples with the configured seed + k."""
        model, k = self.split_run(run)
        base = self._entry(model).get("seed", self._section(section).get("seed", 0))
        return {"seed": base + k}

    def run_pattern(self, video: bool) -> str:
        """A `{run}` wildcard regex matching exactly the image runs or the video runs (their metrics come from
        different rules: `par evaluate` or `par fvd`)."""
        models = self.video_models if video else self.image_models
        return "(" + "|".join(re.escape(m) for m in models) + r")/s\d+" if models else "(?!)"

    # ---------------------------------------------------------------------------------------- files between stages

    def released(self, model: str) -> str:
        """The released checkpoint of `model`, local or downloaded ('' when it is trained here)."""
        entry = self._entry(model)
        if entry.get("checkpoint_url"):
            return f"{self.results}/downloads/{file_name(entry['checkpoint_url'])}"
        return entry.get("checkpoint", "")

    def model_path(self, run: str) -> str:
        model, k = self.split_run(run)
        trained = self.preset.models[model].trained_as or model
        return self.released(model) or f"{self.results}/models/{trained}/s{k}/model.pt"

    def vq_path(self) -> str:
        """The VQ tokenizer: a local checkpoint, a released one (downloaded), or the one `train_vq` writes."""
        tok = self.preset.tokenizer
        if tok.checkpoint:
            return tok.checkpoint
        if tok.url:
            return f"{self.results}/downloads/{file_name(tok.url)}"
        return f"{self.results}/vq/vq.pt"

    def video_vq_path(self) -> str:
        return self.preset.video.tokenizer.checkpoint or f"{self.results}/video/vq/video_vq.pt"

    def tokens_manifest(self, run: str, heldout: bool = False) -> str:
        """The token manifest a run trains on (or, `heldout`, is scored on): the image or the video tokens."""
        folder = ("video/" if self.is_video(self.split_run(run)[0]) else "") + ("tokens_heldout" if heldout else "tokens")
        return f"{self.results}/{folder}/manifest.json"

    def tokenizer_path(self, run: str) -> str:
        return self.video_vq_path() if self.is_video(self.split_run(run)[0]) else self.vq_path()

    def reference_stats(self) -> str:
        """Precomputed FID statistics (downloaded or local), or '' when the reference images are packed here."""
        data = self.preset.data
        if data.reference_stats_url:
            return f"{self.results}/downloads/{file_name(data.reference_stats_url)}"
        return data.reference_stats

    # ---------------------------------------------------------------------------------------- scheduling

    def threads(self, stage: str, at_least: int = 1) -> int:
        """Threads of a stage's jobs (OMP_NUM_THREADS): the CPUs its resources give, never fewer than `at_least`."""
        return max(at_least, self.preset.resources_for(stage).cpus)

    def resources(self, stage: str) -> dict:
        """Snakemake resources of a stage: `resources.<stage>` over `resources.default`."""
        return self.preset.resources_for(stage).snakemake()
