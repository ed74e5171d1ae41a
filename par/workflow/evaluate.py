"""`workflow/rules/sample.smk` and `workflow/rules/evaluate.smk` (stages 3 and 4): the arguments of `par sample`,
`par nll` and `par evaluate`, and what FID compares against."""

from __future__ import annotations

from par.config import EvaluateSettings, NLLSettings, SampleSettings, flags
from par.workflow.preset import Preset, quoted


class EvaluateArgs(Preset):
    """Each run's samples, then their metrics (FID and the rest) and its held-out NLL."""

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

    def evaluation_reference(self) -> str:
        """What FID compares against: precomputed statistics, or the packed reference images."""
        return self.reference_stats() or f"{self.results}/reference.npz"

    def evaluation_reference_flag(self) -> str:
        return "--reference-stats" if self.reference_stats() else "--reference"

    def evaluate_args(self) -> str:
        return quoted(flags(EvaluateSettings, self._section("evaluate")))
