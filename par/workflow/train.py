"""`workflow/rules/train.smk` (stage 2): the arguments of `par train`: its flags, the learning curve's held-out
tokens, and what it asks the cluster for."""

from __future__ import annotations

import os

from par.config import ClusterSettings, TrainSettings, flags
from par.workflow.preset import Preset, quoted


class TrainArgs(Preset):
    """One training job per run; `par train` launches through submitit or in-process, from the submit host."""

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

    def train_request(self, run: str, requeues: int | None = None) -> str:
        """What `par train` will ask the cluster for (submitit, inside the job's shell line), in words: the dry run
        prints it, since the train rule itself runs on the submit host. `requeues`: `par plan`'s count of the
        job's time limits its training crosses (submitit requeues it each time)."""
        model, _ = self.split_run(run)
        r = self.preset.resources_for(self._entry(model).get("resources", "train"))
        where = ", ".join(f"{k} {v}" for k, v in r.placement().items())
        gpus = f"{r.nodes} node(s) × {r.gpus} GPU(s)" if r.gpus else f"{r.nodes} node(s), no GPU"
        text = f"{gpus}, {r.cpus} CPUs per task, {r.mem_mb // 1000} GB, {r.runtime} min" + (f", {where}" if where else "")
        return text + (f"; submitit requeues it ~{requeues} time(s) (par plan)" if requeues else "")

    def trains_on_gpus(self) -> bool:
        """Whether any training job of the preset asks for GPUs (then the dry run asks `par plan` for requeues)."""
        return any(self.preset.resources_for(self._entry(m).get("resources", "train")).gpus
                   for m in self.models if not (self.released(m) or self._entry(m).get("trained_as")))
