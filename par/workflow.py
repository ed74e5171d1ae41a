"""What the Snakemake workflow computes from its config, without Snakemake and without torch.

`workflow/rules/common.smk` builds one `Experiment` from Snakemake's `config` (config.yaml plus any `--configfile`
and `--config` overrides). Building it checks the whole config with `par.config.check_workflow_config`, so a wrong
key, type or value in any preset stops `snakemake -n` with the key's path. The rules then read their paths, the
flags of their `par` command (shell-quoted strings, passed as `params:`) and their scheduler resources from it.

Flags carry only the keys the config writes (the command's own defaults cover the rest), layered as the rules
always did: e.g. `par train` gets the preset's `train` section overlaid with the model's entry, and the cluster
request of the model's `resources` entry.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from par.config import (ClassifierSettings, ClusterSettings, EvaluateSettings, NLLSettings, SampleSettings,
                        SplitSettings, TinysetSettings, TokenizeSettings, TrainSettings, VideoSettings,
                        VideoTokenizeSettings, VideoVQTrainSettings, VQTrainSettings, check_workflow_config, flags)
from par.errors import UserError

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


class Experiment:
    """The active preset of a workflow config: paths, model names, and each rule's flags and resources."""

    def __init__(self, config: dict):
        self.config = json.loads(json.dumps(config))  # plain dicts and lists (Snakemake may hand a subclass)
        self.settings = check_workflow_config(self.config)
        self.preset_name = self.settings.preset
        self.preset = self.settings.presets[self.preset_name]  # checked, defaults filled in
        self.written = self.config["presets"][self.preset_name]  # as written: flags come from the keys given
        self.results = f"{self.settings.results}/{self.preset_name}"
        self.analysis = f"{self.settings.analysis}/{self.preset_name}"
        self.models = sorted(self.written["models"])
        self._check_trained_as()
        # a run = one trained instance of a model: `<model>/s<k>`, k over the entry's seeds (its `trained_as`'s)
        self.runs = [f"{m}/s{k}" for m in self.models for k in range(self.seeds(m))]
        # the video half (Table 4): models with `modality: video` train on the tokens of the `video` section
        self.video_models = [m for m in self.models if self.is_video(m)]
        self.image_models = [m for m in self.models if not self.is_video(m)]
        self.video_runs = [r for r in self.runs if self.is_video(self.split_run(r)[0])]
        self.image_runs = [r for r in self.runs if r not in self.video_runs]
        self.nll_runs = [r for r in self.runs if self.preset.models[self.split_run(r)[0]].score_nll
                         and (self.preset.data.source != "none" or r in self.video_runs)]
        self.tables = sorted(self.settings.tables)
        self.config_file = f"{self.results}/{CONFIG_FILE_NAME}"
        data, key = self.preset.data, f"presets.{self.preset_name}"
        if data.source in ("imagefolder", "idx") and not data.images:
            raise UserError(f"{key}.data.images: required when data.source is {data.source}")
        if data.source == "idx" and not (data.labels and data.heldout_images and data.heldout_labels):
            raise UserError(f"{key}.data: source idx needs labels, heldout_images and heldout_labels (the IDX files "
                            "of the train and test splits)")
        if data.source == "none" and self.image_models:
            trained = [m for m in self.image_models if not self.released(m)]
            if trained:
                raise UserError(f"{key}.models: {', '.join(trained)} would be trained, but data.source is none; give "
                                "them checkpoint or checkpoint_url, or set data.source")
            if not self.reference_stats():
                raise UserError(f"{key}.data: source none needs reference_stats or reference_stats_url (there are no "
                                "held-out images to make a reference from)")
        for m in self.models:
            if self.released(m) and self.preset.models[m].seeds != 1:
                raise UserError(f"{key}.models.{m}.seeds: a released checkpoint is one run; remove seeds")

    def _check_trained_as(self) -> None:
        """`trained_as` names another entry that is trained here, and the seeds are that entry's."""
        key = f"presets.{self.preset_name}.models"
        for m in self.models:
            target = self.preset.models[m].trained_as
            if not target:
                continue
            if target not in self.preset.models or target == m:
                raise UserError(f"{key}.{m}.trained_as: {target!r} is not another model of this preset "
                                f"({', '.join(self.models)})")
            t = self.preset.models[target]
            if t.trained_as or t.checkpoint or t.checkpoint_url:
                raise UserError(f"{key}.{m}.trained_as: {target!r} is not trained here (it is released or itself "
                                "trained_as); name the entry that trains")
            if "seeds" in self._entry(m) and self.preset.models[m].seeds != t.seeds:
                raise UserError(f"{key}.{m}.seeds: it samples the runs of {target!r}, which has {t.seeds}; remove "
                                "seeds")

    def is_video(self, model: str) -> bool:
        """Whether `model` generates video (its entry, or the entry it is `trained_as`, says modality: video)."""
        entry = self.preset.models[model]
        return "video" in (entry.modality, self.preset.models[entry.trained_as].modality if entry.trained_as else "")

    def seeds(self, model: str) -> int:
        target = self.preset.models[model].trained_as
        return self.preset.models[target or model].seeds

    def user_inputs(self) -> list[tuple[str, str, str]]:
        """(config key, path, kind) of every file or folder the user supplies and the DAG needs."""
        key, data, tok = f"presets.{self.preset_name}", self.preset.data, self.preset.tokenizer
        out = []
        kind = "folder" if data.source == "imagefolder" else "file"
        if data.source != "tinyset":
            out += [(f"{key}.data.{name}", getattr(data, name), kind) for name in ("images", "heldout_images")
                    if getattr(data, name)]
            out += [(f"{key}.data.{name}", getattr(data, name), "file") for name in ("labels", "heldout_labels")
                    if getattr(data, name)]
        if data.reference_stats:
            out.append((f"{key}.data.reference_stats", data.reference_stats, "file"))
        if tok.checkpoint:
            out.append((f"{key}.tokenizer.checkpoint", tok.checkpoint, "file"))
        if self.has_video and self.preset.video.tokenizer.checkpoint:
            out.append((f"{key}.video.tokenizer.checkpoint", self.preset.video.tokenizer.checkpoint, "file"))
        clips = self.preset.video.clips
        if self.has_video and clips.source == "ucf101":
            out += [(f"{key}.video.clips.{k}", getattr(clips, k), "folder") for k in ("root", "lists")
                    if getattr(clips, k)]
            if not clips.root:
                raise UserError(f"{key}.video.clips.root: required for source ucf101 (the UCF-101/ folder)")
        out += [(f"{key}.models.{m}.checkpoint", self._entry(m)["checkpoint"], "file") for m in self.models
                if self._entry(m).get("checkpoint")]
        return out

    def check_inputs(self, dry_run: bool = False) -> list[str]:
        """Fail when the DAG is built, not after hours of training, on a user-supplied path that does not exist
        (one line naming the config key), or on own images that cannot give a clean held-out split. A dry run
        (`snakemake -n`, made before 150 GB are downloaded) does not fail on missing paths: it gets them back,
        one line each, to print as warnings while it lists the jobs."""
        missing = []
        for key, path, kind in self.user_inputs():
            ok = Path(path).is_dir() if kind == "folder" else Path(path).is_file()
            if not ok:
                missing.append(f"{key}: {path}: no such {kind}; fix the path in the config")
        if missing and not dry_run:
            raise UserError(missing[0])
        self._check_heldout_split()
        return missing

    def _check_heldout_split(self) -> None:
        """Own data: the held-out split is another path than the training images, and without one every class
        can be split by `heldout_fraction` (the checks `par prepare-images` makes, early, on what exists)."""
        from par.data.split import check_disjoint, class_counts, heldout_count

        data, key = self.preset.data, f"presets.{self.preset_name}.data"
        if data.source not in ("imagefolder", "idx") or not Path(data.images).exists():
            return
        try:
            if data.heldout_images:
                check_disjoint(data.images, data.heldout_images)
            elif data.source == "imagefolder":
                for name, n in class_counts(data.images).items():
                    heldout_count(n, data.heldout_fraction, f"{data.images}/{name}")
        except UserError as e:
            raise UserError(f"{key}: {e}") from None

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

    # ---------------------------------------------------------------------------------------- data and tokenizer

    @property
    def has_images(self) -> bool:
        """Whether the preset has images (and so tokens, an entropy analysis, NLL); not for `source: none`."""
        return self.preset.data.source != "none"

    @property
    def uses_tinyset(self) -> bool:
        return self.preset.data.source == "tinyset"

    def tinyset_args(self) -> str:
        return quoted(flags(TinysetSettings, self._section("data").get("tinyset") or {}))

    def reference_tinyset_args(self) -> str:
        """The tinyset flags with the reference seed: a second, disjoint draw (held-out real images for FID)."""
        tinyset = self._section("data").get("tinyset") or {}
        return quoted(flags(TinysetSettings, tinyset, {"seed": self.preset.data.reference_seed}))

    def images_marker(self) -> str:
        """The file that marks the preset's image splits complete (`par prepare-images` / `par make-tinyset`)."""
        return f"{self.results}/images/{'tinyset' if self.uses_tinyset else 'images'}.json"

    def heldout_marker(self) -> str:
        """The marker of the held-out split: the reference tinyset draw, or the same `prepare-images` tree."""
        return f"{self.results}/reference_images/tinyset.json" if self.uses_tinyset else self.images_marker()

    def prepare_images_args(self) -> str:
        return quoted(["--source", self.preset.data.source] + flags(SplitSettings, self._section("data")))

    def image_folder(self, wildcards, input) -> str:  # noqa: A002 — a Snakemake params function
        """The training images: the generated tinyset, or the `train/` split of `par prepare-images`."""
        folder = os.path.dirname(input.images)
        return folder if self.uses_tinyset else f"{folder}/train"

    def heldout_folder(self, wildcards, input) -> str:  # noqa: A002 — a Snakemake params function
        """The held-out images (never trained on): the reference tinyset, or the `test/` split."""
        folder = os.path.dirname(input.heldout)
        return folder if self.uses_tinyset else f"{folder}/test"

    def reference_args(self) -> str:
        """`par make-reference`: held-out real images at the evaluation size (the first draw of the split)."""
        return quoted(["--size", self.preset.sample.image_size, "--max-images", self.preset.data.reference_images])

    @property
    def floors(self) -> list[str]:
        """The floors measured beside every table: held-out real images (real vs real), and the same images
        through the VQ tokenizer (reconstruction). Empty when `data.floor_images` is 0 or FID uses statistics."""
        return ["real", "recon"] if self.preset.data.floor_images and not self.reference_stats() else []

    def floor_args(self, floor: str) -> str:
        """`par make-reference` for a floor: the held-out images after the reference's, disjoint from it."""
        data = self.preset.data
        args = ["--size", self.preset.sample.image_size, "--offset", data.reference_images,
                "--max-images", data.floor_images]
        return quoted(args + (["--vq-size", self.preset.tokenize.image_size] if floor == "recon" else []))

    def vq_train_args(self) -> str:
        return quoted(flags(VQTrainSettings, self._section("tokenizer").get("train") or {}))

    def tokenize_args(self) -> str:
        return quoted(flags(TokenizeSettings, self._section("tokenize")))

    @property
    def tokenize_slots(self) -> list[int]:
        """The parallel tokenization jobs (`tokenize.array_tasks`); empty for one job, which writes the manifest."""
        k = self.preset.tokenize.array_tasks
        return list(range(k)) if k > 1 else []

    def vq_path(self) -> str:
        """The VQ tokenizer: a local checkpoint, a released one (downloaded), or the one `train_vq` writes."""
        tok = self.preset.tokenizer
        if tok.checkpoint:
            return tok.checkpoint
        if tok.url:
            return f"{self.results}/downloads/{file_name(tok.url)}"
        return f"{self.results}/vq/vq.pt"

    def reference_stats(self) -> str:
        """Precomputed FID statistics (downloaded or local), or '' when the reference images are packed here."""
        data = self.preset.data
        if data.reference_stats_url:
            return f"{self.results}/downloads/{file_name(data.reference_stats_url)}"
        return data.reference_stats

    def download_source(self, file: str) -> tuple[str, str]:
        """(url, sha256) of the released file stored as `<results>/downloads/<file>`."""
        tok, data = self.preset.tokenizer, self.preset.data
        models = [(e.checkpoint_url, e.checkpoint_sha256) for e in self.preset.models.values()]
        for url, sha in ((tok.url, tok.sha256), (data.reference_stats_url, data.reference_stats_sha256), *models):
            if url and file_name(url) == file:
                return url, sha
        raise UserError(f"no download configured for {file} in preset {self.preset_name}")

    def fetch_args(self, file: str) -> str:
        url, sha = self.download_source(file)
        return quoted(["--url", url, "--sha256", sha] + ["--allow-unpinned"] * self.settings.allow_unpinned)

    # ---------------------------------------------------------------------------------------- video (Table 4)

    @property
    def has_video(self) -> bool:
        return bool(self.video_models)

    def _video(self, *keys) -> dict:
        d = self._section("video")
        for k in keys:
            d = d.get(k) or {}
        return d

    def prepare_video_args(self, split: str) -> str:
        """`par prepare-video`: the clip settings; the held-out split has its own count (`heldout_videos`)."""
        clips = self._video("clips")
        heldout = {"num_videos": self.preset.video.heldout_videos} if split == "test" else {}
        return quoted(["--split", split] + flags(VideoSettings, clips, heldout))

    @property
    def video_slots(self) -> list[int]:
        """Parallel clip-making and tokenization jobs (`video.array_tasks`); empty for one job."""
        k = self.preset.video.array_tasks
        return list(range(k)) if k > 1 else []

    def video_vq_path(self) -> str:
        return self.preset.video.tokenizer.checkpoint or f"{self.results}/video/vq/video_vq.pt"

    def video_vq_train_args(self) -> str:
        """`par train-video-vq`: its settings, trained on clips of the preset's length unless it sets `frames`."""
        return quoted(flags(VideoVQTrainSettings, {"frames": self.preset.video.clips.frames},
                            self._video("tokenizer", "train")))

    def video_tokenize_args(self) -> str:
        return quoted(flags(VideoTokenizeSettings, self._video("tokenize")))

    def fvd_args(self) -> str:
        f = self.preset.video.fvd
        return quoted(["--frames", f.frames, "--batch-size", f.batch_size, "--bootstrap", f.bootstrap,
                       "--device", f.device])

    def fvd_stats_args(self) -> str:
        f = self.preset.video.fvd
        return quoted(["--max-clips", f.reference_clips, "--frames", f.frames, "--batch-size", f.batch_size,
                       "--device", f.device])

    @property
    def video_floors(self) -> list[str]:
        """Table 4's floors: held-out real clips, and the same through the video tokenizer (rFVD)."""
        return ["real", "recon"] if self.has_video and self.preset.video.fvd.floor_clips else []

    def video_floor_args(self) -> str:
        return quoted(["--max-clips", self.preset.video.fvd.floor_clips])

    def run_pattern(self, video: bool) -> str:
        """A `{run}` wildcard regex matching exactly the image runs or the video runs (their metrics come from
        different rules: `par evaluate` or `par fvd`)."""
        import re

        models = self.video_models if video else self.image_models
        return "(" + "|".join(re.escape(m) for m in models) + r")/s\d+" if models else "(?!)"

    def tokens_manifest(self, run: str, heldout: bool = False) -> str:
        """The token manifest a run trains on (or, `heldout`, is scored on): the image or the video tokens."""
        folder = ("video/" if self.is_video(self.split_run(run)[0]) else "") + ("tokens_heldout" if heldout else "tokens")
        return f"{self.results}/{folder}/manifest.json"

    def tokenizer_path(self, run: str) -> str:
        return self.video_vq_path() if self.is_video(self.split_run(run)[0]) else self.vq_path()

    # ---------------------------------------------------------------------------------------- models

    def released(self, model: str) -> str:
        """The released checkpoint of `model`, local or downloaded ('' when it is trained here)."""
        entry = self._entry(model)
        if entry.get("checkpoint_url"):
            return f"{self.results}/downloads/{file_name(entry['checkpoint_url'])}"
        return entry.get("checkpoint", "")

    @staticmethod
    def split_run(run: str) -> tuple[str, int]:
        """`<model>/s<k>` → (model, k)."""
        model, _, k = run.rpartition("/s")
        return model, int(k)

    def model_path(self, run: str) -> str:
        model, k = self.split_run(run)
        trained = self.preset.models[model].trained_as or model
        return self.released(model) or f"{self.results}/models/{trained}/s{k}/model.pt"

    def _seeded(self, section: str, run: str) -> dict:
        """Run k of a model trains and samples with the configured seed + k."""
        model, k = self.split_run(run)
        base = self._entry(model).get("seed", self._section(section).get("seed", 0))
        return {"seed": base + k}

    def train_args(self, run: str) -> str:
        """`par train`: the preset's `train` section overlaid with the model's entry and the run's seed, then
        the cluster request of the model's `resources` entry (default `train`)."""
        model, _ = self.split_run(run)
        entry = self._entry(model)
        cluster = self.preset.resources_for(entry.get("resources", "train")).cluster()
        return quoted(flags(TrainSettings, self._section("train"), entry, self._seeded("train", run))
                      + flags(ClusterSettings, cluster))

    def curve_manifest(self, run: str) -> list[str]:
        """The held-out token manifest whose NLL `par train` scores at its checkpoints (the learning curve, #24), as
        a rule input: [] when the run's entry or the `train` section sets curve_images 0, or the preset has no held-out
        tokens for it (images from `source: none`)."""
        model, _ = self.split_run(run)
        written = self._section("train") | self._entry(model)
        images = written.get("curve_images", self.preset.train.curve_images)
        if not images or not (self.has_images or self.is_video(model)):
            return []
        return [self.tokens_manifest(run, heldout=True)]

    def curve_args(self, run: str) -> str:
        """`par train --curve-tokens <folder of curve_manifest>`, or "" without a learning curve."""
        return quoted([a for m in self.curve_manifest(run) for a in ("--curve-tokens", os.path.dirname(m))])

    def train_request(self, run: str) -> str:
        """What `par train` will ask the cluster for (submitit, inside the job's shell line), in words: the dry run
        prints it, since the train rule itself runs on the submit host."""
        model, _ = self.split_run(run)
        r = self.preset.resources_for(self._entry(model).get("resources", "train"))
        where = ", ".join(f"{k} {v}" for k, v in r.placement().items())
        gpus = f"{r.nodes} node(s) × {r.gpus} GPU(s)" if r.gpus else f"{r.nodes} node(s), no GPU"
        return f"{gpus}, {r.cpus} CPUs per task, {r.mem_mb // 1000} GB, {r.runtime} min" + (f", {where}" if where else "")

    def sample_args(self, run: str) -> str:
        """`par sample`: the preset's `sample` section overlaid with the model's entry and the run's seed; a
        released checkpoint carries no config, so its size, order and n are passed too."""
        model, _ = self.split_run(run)
        entry = self._entry(model)
        args = flags(SampleSettings, self._section("sample"), entry, self._seeded("sample", run))
        gpus = self.preset.resources_for("sample").gpus
        if gpus > 1:  # one worker per GPU the job holds
            args += ["--procs", gpus]
        if self.released(model):
            args += ["--size", entry["size"], "--order", entry["order"], "--n", entry["n"]]
        return quoted(args)

    def nll_args(self) -> str:
        return quoted(flags(NLLSettings, self._section("nll")))

    def classifier_args(self) -> str:
        return quoted(flags(ClassifierSettings, self._section("classifier")))

    @property
    def uses_classifier(self) -> bool:
        return self.preset.evaluate.classifier and not self.reference_stats() and bool(self.image_models)

    # ---------------------------------------------------------------------------------------- evaluation

    def evaluation_reference(self) -> str:
        """What FID compares against: precomputed statistics, or the packed reference images."""
        return self.reference_stats() or f"{self.results}/reference.npz"

    def evaluation_reference_flag(self) -> str:
        return "--reference-stats" if self.reference_stats() else "--reference"

    def evaluate_args(self) -> str:
        return quoted(flags(EvaluateSettings, self._section("evaluate")))

    # ---------------------------------------------------------------------------------------- entropy (§8)

    def entropy_references(self) -> list[str]:
        """The reference cells of the maps as file-name parts, `row_col`."""
        return [f"{r}_{c}" for r, c in self.preset.entropy.references]

    def entropy_features_args(self) -> str:
        return quoted(["--num-images", self.preset.entropy.num_images])

    def _estimator(self) -> list:
        e = self.preset.entropy
        return ["--estimator", e.estimator, "--alpha", e.alpha]

    def entropy_map_args(self, reference: str) -> str:
        return quoted(["--reference", reference.replace("_", ","), *self._estimator()])

    def entropy_increase_args(self) -> str:
        return quoted(["--n", self.preset.entropy.n, *self._estimator()])

    # ---------------------------------------------------------------------------------------- scheduling

    def threads(self, stage: str, at_least: int = 1) -> int:
        """Threads of a stage's jobs (OMP_NUM_THREADS): the CPUs its resources give, never fewer than `at_least`."""
        return max(at_least, self.preset.resources_for(stage).cpus)

    def resources(self, stage: str) -> dict:
        """Snakemake resources of a stage: `resources.<stage>` over `resources.default`."""
        return self.preset.resources_for(stage).snakemake()
