"""What the Snakemake workflow computes from its config, without Snakemake and without torch.

`workflow/rules/common.smk` builds one `Experiment` from Snakemake's `config` (config.yaml plus any `--configfile`
and `--config` overrides). Building it checks the whole config, in one place (`checks.py`, after
`par.config.check_workflow_config`), so a wrong key, type or value in any preset stops `snakemake -n` with the
key's path. The rules then read their paths, the flags of their `par` command (shell-quoted strings, passed as
`params:`) and their scheduler resources from it.

Flags carry only the keys the config writes (the command's own defaults cover the rest), layered as the rules
always did: e.g. `par train` gets the preset's `train` section overlaid with the model's entry, and the cluster
request of the model's `resources` entry.

`Experiment` composes one class per stage over the `Preset` they share; the header of each rule file names its module:

    workflow/Snakefile, rules/common.smk     preset.py     the checked preset, runs, files between stages, resources
                                             checks.py     every check of the config
    workflow/rules/data.smk                  data.py       DataArgs
    workflow/rules/video.smk                 video.py      VideoArgs
    workflow/rules/train.smk                 train.py      TrainArgs
    workflow/rules/sample.smk, evaluate.smk  evaluate.py   EvaluateArgs
    workflow/rules/entropy.smk, report.smk   analysis.py   AnalysisArgs

What more than one rule file reads (a checkpoint's path, `run_pattern`, `resources`, …) is on `Preset`.
"""

from __future__ import annotations

from par.workflow.analysis import AnalysisArgs
from par.workflow.data import DataArgs
from par.workflow.evaluate import EvaluateArgs
from par.workflow.preset import CONFIG_FILE_NAME, Preset, file_name, input_folder, output_folder, quoted, results_folder
from par.workflow.train import TrainArgs
from par.workflow.video import VideoArgs

__all__ = ["CONFIG_FILE_NAME", "Experiment", "Preset", "file_name", "input_folder", "output_folder", "quoted",
           "results_folder"]


class Experiment(DataArgs, VideoArgs, TrainArgs, EvaluateArgs, AnalysisArgs):
    """The active preset of a workflow config: paths, model names, and each rule's flags and resources."""
