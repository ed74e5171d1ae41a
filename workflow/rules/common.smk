# The active preset, checked, and what the rules read from it. All logic lives in the package par/workflow/
# (torch-free, unit-tested). Its `Experiment` (__init__.py) is one class per stage, in data.py, video.py, train.py,
# evaluate.py and analysis.py (the header of each rules file names its own), over the `Preset` they share
# (preset.py, with the runs, the files between stages and the resources); checks.py holds every check of the
# config. This file only builds it once and adapts it to Snakemake's input/params functions.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from par.errors import UserError
from par.lifecycle import clear_stale_locks, jobs_end_with_snakemake, record_lock_owner
from par.workflow import Experiment, input_folder, output_folder, results_folder

try:
    experiment = Experiment(config)  # checks every preset: a wrong key, type or value fails here with its path
    # and every path the user supplies: a missing one fails now, not hours later; a dry run lists the jobs anyway
    missing_inputs = experiment.check_inputs(dry_run=workflow.output_settings.dryrun)
except UserError as e:
    raise WorkflowError(f"config: {e}") from None
for line in missing_inputs:
    logger.warning(f"config: {line} (dry run: jobs listed anyway; a real run stops here)")

# The config this run uses (config.yaml + --configfile + --config), rewritten only when it changes: tables and
# report take it as input, so they rerun exactly when the configuration does. Jobs (on Slurm, say) leave it alone.
if workflow.is_main_process:
    experiment.write_config()

# Let a `--use-conda` environment install this checkout of `par` (envs/par.yaml: `-e ${PAR_SOURCE}`).
os.environ.setdefault("PAR_SOURCE", str(Path(workflow.basedir).parent))

# Jobs end with Snakemake (par/lifecycle.py; the rules `exec par`, so this process is the job's parent): a SIGTERM
# or a first SIGINT reaches them too (Snakemake alone would wait for them to finish), and a job whose Snakemake
# died stops itself.
jobs_end_with_snakemake()

# A Snakemake killed with -9 leaves its lock behind: each run records who holds its lock files, and the next run
# removes those of an owner that is gone, instead of failing with LockException until `snakemake --unlock`.
if workflow.is_main_process:
    for line in clear_stale_locks():
        logger.warning(f"lock: {line}")


onstart:
    record_lock_owner(workflow.persistence)

results = experiment.results
analysis = experiment.analysis
models = experiment.models
runs = experiment.runs
config_file = experiment.config_file


wildcard_constraints:
    run=r"[^/]+/s\d+",
    slot=r"\d+",


# Input and params functions by wildcard, shared by the rules files. Each adapts one method of the stage module
# named in the header of the rules file that uses it (train_args, in train.smk, of par/workflow/train.py), or of
# preset.py.
def train_args(wildcards):
    return experiment.train_args(wildcards.run)


def train_request(wildcards):
    return experiment.train_request(wildcards.run, planned_requeues().get(experiment.split_run(wildcards.run)[0]))


_requeues = {}


def planned_requeues() -> dict:
    """`par plan`'s requeues per trained model, once per run of Snakemake. Its FLOPs need the network (torch), so
    only a preset whose training asks for GPUs pays for it; a CPU preset's DAG never imports torch."""
    if "models" not in _requeues:
        _requeues["models"] = {}
        if experiment.trains_on_gpus():
            from par.train.plan import plan

            try:
                rows = plan(experiment.config_file, experiment.preset_name, experiment.results, 0.4)
            except UserError as e:  # the plan is advice: say why it is missing, keep the DAG
                logger.warning(f"par plan: {e} (no requeue counts in this dry run)")
                rows = []
            _requeues["models"] = {r["model"]: r.get("requeues") for r in rows}
    return _requeues["models"]


def sample_args(wildcards):
    return experiment.sample_args(wildcards.run)


def model_file(wildcards):
    return experiment.model_path(wildcards.run)


def fetch_args(wildcards):
    return experiment.fetch_args(wildcards.file)


def entropy_map_args(wildcards):
    return experiment.entropy_map_args(wildcards.ref)


def training_images(wildcards):
    """The marker file of the training split (written by `make-tinyset` or `prepare-images`)."""
    return {"images": experiment.images_marker()}


def tokens(wildcards):
    """The token manifest of a run: the image tokens, or the video tokens of a `modality: video` model."""
    return experiment.tokens_manifest(wildcards.run)


def heldout_tokens(wildcards):
    return experiment.tokens_manifest(wildcards.run, heldout=True)


def tokenizer(wildcards):
    """The tokenizer that decodes a run's samples: the image VQ or the video tokenizer."""
    return experiment.tokenizer_path(wildcards.run)
