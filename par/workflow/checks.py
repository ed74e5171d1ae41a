"""The one place the workflow checks its config, beyond what `par.config` checks key by key.

Two steps, both from `common.smk` through `Preset`: `check_preset` when the preset is built (what spans sections:
`trained_as`, the data source against the models, released checkpoints), so that a wrong value stops
`snakemake -n` with its key's path; `check_inputs` once the DAG is built (the paths the user supplies, and own
images that must split cleanly). Every message names the config key to fix. Each function takes `p`, the `Preset`
being built (not imported here: preset.py imports this module).
"""

from __future__ import annotations

from pathlib import Path

from par.errors import UserError


def check_preset(p) -> None:
    """What one section cannot check alone: raises UserError naming the key."""
    _check_trained_as(p)
    data, key = p.preset.data, f"presets.{p.preset_name}"
    if data.source in ("imagefolder", "idx") and not data.images:
        raise UserError(f"{key}.data.images: required when data.source is {data.source}")
    if data.source == "idx" and not (data.labels and data.heldout_images and data.heldout_labels):
        raise UserError(f"{key}.data: source idx needs labels, heldout_images and heldout_labels (the IDX files "
                        "of the train and test splits)")
    image_models = [m for m in p.models if not p.is_video(m)]
    if data.source == "none" and image_models:
        trained = [m for m in image_models if not p.released(m)]
        if trained:
            raise UserError(f"{key}.models: {', '.join(trained)} would be trained, but data.source is none; give "
                            "them checkpoint or checkpoint_url, or set data.source")
        if not p.reference_stats():
            raise UserError(f"{key}.data: source none needs reference_stats or reference_stats_url (there are no "
                            "held-out images to make a reference from)")
    for m in p.models:
        if p.released(m) and p.preset.models[m].seeds != 1:
            raise UserError(f"{key}.models.{m}.seeds: a released checkpoint is one run; remove seeds")


def _check_trained_as(p) -> None:
    """`trained_as` names another entry that is trained here, and the seeds are that entry's."""
    key = f"presets.{p.preset_name}.models"
    for m in p.models:
        target = p.preset.models[m].trained_as
        if not target:
            continue
        if target not in p.preset.models or target == m:
            raise UserError(f"{key}.{m}.trained_as: {target!r} is not another model of this preset "
                            f"({', '.join(p.models)})")
        t = p.preset.models[target]
        if t.trained_as or t.checkpoint or t.checkpoint_url:
            raise UserError(f"{key}.{m}.trained_as: {target!r} is not trained here (it is released or itself "
                            "trained_as); name the entry that trains")
        if "seeds" in p._entry(m) and p.preset.models[m].seeds != t.seeds:
            raise UserError(f"{key}.{m}.seeds: it samples the runs of {target!r}, which has {t.seeds}; remove "
                            "seeds")


def user_inputs(p) -> list[tuple[str, str, str]]:
    """(config key, path, kind) of every file or folder the user supplies and the DAG needs."""
    key, data, tok = f"presets.{p.preset_name}", p.preset.data, p.preset.tokenizer
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
    if p.has_video and p.preset.video.tokenizer.checkpoint:
        out.append((f"{key}.video.tokenizer.checkpoint", p.preset.video.tokenizer.checkpoint, "file"))
    clips = p.preset.video.clips
    if p.has_video and clips.source == "ucf101":
        out += [(f"{key}.video.clips.{k}", getattr(clips, k), "folder") for k in ("root", "lists")
                if getattr(clips, k)]
        if not clips.root:
            raise UserError(f"{key}.video.clips.root: required for source ucf101 (the UCF-101/ folder)")
    out += [(f"{key}.models.{m}.checkpoint", p._entry(m)["checkpoint"], "file") for m in p.models
            if p._entry(m).get("checkpoint")]
    return out


def check_inputs(p, dry_run: bool = False) -> list[str]:
    """Fail when the DAG is built, not after hours of training, on a user-supplied path that does not exist
    (one line naming the config key), or on own images that cannot give a clean held-out split. A dry run
    (`snakemake -n`, made before 150 GB are downloaded) does not fail on missing paths: it gets them back,
    one line each, to print as warnings while it lists the jobs."""
    missing = []
    for key, path, kind in user_inputs(p):
        ok = Path(path).is_dir() if kind == "folder" else Path(path).is_file()
        if not ok:
            missing.append(f"{key}: {path}: no such {kind}; fix the path in the config")
    if missing and not dry_run:
        raise UserError(missing[0])
    _check_heldout_split(p)
    return missing


def _check_heldout_split(p) -> None:
    """Own data: the held-out split is another path than the training images, and without one every class
    can be split by `heldout_fraction` (the checks `par prepare-images` makes, early, on what exists)."""
    from par.data.split import check_disjoint, class_counts, heldout_count

    data, key = p.preset.data, f"presets.{p.preset_name}.data"
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
