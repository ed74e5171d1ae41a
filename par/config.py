"""Every setting of the pipeline, defined once — type, default and a one-line help — and torch-free.

One dataclass per settings group. From these definitions, and nowhere else, come:

* the `par <command>` flags, with help and defaults shown (`add_arguments`, `from_args`);
* the check of every preset in config.yaml, which names the bad key's path and the closest known key
  (`check`, used by the Snakefile, by `par tables/report/plan --config` and by `--config` files);
* the flags each Snakemake rule passes to its command (`par.workflow`);
* the JSON schema `workflow/schemas/config.schema.yaml` (`schema`; `par config schema` writes it, a test keeps it equal).

Adding a knob: add one field here (and use it where it acts). Nothing else needs editing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from par.devices import HELP as DEVICE_HELP
from par.errors import UserError


def knob(default: Any = MISSING, help: str = "", *, factory=MISSING, choices: tuple | None = None,
         minimum: float | None = None, maximum: float | None = None, required: bool = False):
    """A settings field: default (or factory), one-line help, and the checks the schema and the CLI share."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "required": required}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ================================================================================================ model (§3.3)

@dataclass(kw_only=True)
class ModelSettings:
    """What defines a PAR / LlamaGen model besides the data it is trained on."""

    size: str = knob("GPT-L", "model size preset: GPT-B/L/XL/XXL/3B (paper) or tiny-S/M/L (CPU presets)")
    order: str = knob("par", "token order: raster, PAR's distant regions (§3.2), or arpg: ARPG's random orders and "
                      "its target-aware decoder (the peer row; sampled with the arpg_* settings)",
                      choices=("par", "raster", "arpg"))
    n: int = knob(4, "tokens generated per step, n = M² (1 = plain next-token AR)", minimum=1)
    initial_sequential: bool = knob(True, "generate the first token of every region one by one first (Table 3(a))")
    group_attention: str = knob("full", "attention inside a parallel group (Table 3(c) ablation: causal)",
                                choices=("full", "causal"))
    regions: int = knob(0, "regions of the PAR permutation when ≠ n (Table 3(d) 'distant one': regions=4, n=1)",
                        minimum=0)


# ================================================================================================ training (§4)

@dataclass(kw_only=True)
class TrainSettings(ModelSettings):
    """The training recipe (paper §4 and the reference's train_c2i.py)."""

    dropout: float = knob(0.1, "token, residual and FFN dropout", minimum=0, maximum=1)
    class_dropout: float = knob(0.1, "class-label dropout (trains the unconditional branch for CFG)", minimum=0,
                                maximum=1)
    global_batch: int = knob(256, "images per optimizer step, summed over all ranks", minimum=1)
    lr: float = knob(1e-4, "peak AdamW learning rate", minimum=0)
    beta1: float = knob(0.9, "AdamW β1", minimum=0, maximum=1)
    beta2: float = knob(0.95, "AdamW β2", minimum=0, maximum=1)
    weight_decay: float = knob(0.05, "AdamW weight decay on ≥ 2-D tensors", minimum=0)
    grad_clip: float = knob(1.0, "gradient-norm clip", minimum=0)
    epochs: float = knob(300.0, "training length in epochs (ignored when max_steps > 0)", minimum=0)
    max_steps: int = knob(0, "training length in steps; > 0 overrides epochs", minimum=0)
    schedule: str = knob("cosine", "LR schedule: cosine (paper table: warm-up then cosine to 0) or constant "
                         "(released code)", choices=("cosine", "constant"))
    min_lr: float = knob(0.0, "learning rate the cosine schedule ends at (ARPG's recipe: 1e-5)", minimum=0)
    warmup_epochs: float = knob(15.0, "linear warm-up length in epochs (cosine schedule)", minimum=0)
    precision: str = knob("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16",
                          choices=("auto", "fp32", "bf16"))
    compile: bool = knob(False, "torch.compile the training step")
    attention: str = knob("auto", "attention kernel of training: flex (FlexAttention over PAR's group mask as a "
                                  "BlockMask, fused and tile-skipping on a GPU), sdpa (boolean mask) or auto (flex on "
                                  "a GPU, sdpa elsewhere: FlexAttention has no backward on the CPU)",
                          choices=("auto", "flex", "sdpa"))
    parallel: str = knob("auto", "ranks: ddp (each holds the model), fsdp (FSDP2: each holds 1/world of weights, "
                                 "gradients and AdamW states; bf16 compute on GPU) or auto (fsdp from 1B parameters "
                                 "on several ranks)", choices=("auto", "ddp", "fsdp"))
    fsdp_shard_group: int = knob(0, "FSDP: GPUs a shard group spans. 0 = one node (hybrid sharding, HSDP: shard "
                                    "inside a node over NVLink, replicate across nodes, so only gradients cross the "
                                    "network); the world size shards fully", minimum=0)
    micro_batch: int = knob(0, "images per forward pass on a rank; the rank's share of global_batch is accumulated "
                               "in micro-batches of this size (0 = the whole share at once)", minimum=0)
    activation_checkpointing: bool = knob(False, "recompute each block's activations in the backward pass (memory "
                                                 "for compute; `par plan` says when a job needs it)")
    ema: bool = knob(False, "keep an fp32 exponential moving average of the weights (reference --ema)")
    ema_decay: float = knob(0.9999, "EMA decay per optimizer step", minimum=0, maximum=1)
    ckpt_every: int = knob(5000, "steps between resumable checkpoints (ckpt.pt)", minimum=1)
    log_every: int = knob(50, "steps between log.jsonl records", minimum=1)
    curve_images: int = knob(256, "learning curve: held-out images (centre crop; the first of `par nll`'s fixed "
                                  "draw) whose NLL is scored into log.jsonl at every curve_every steps and the last, "
                                  "given --curve-tokens; 0 = no curve", minimum=0)
    curve_every: int = knob(0, "learning curve: steps between its points (0 = at every checkpoint, ckpt_every)",
                            minimum=0)
    seed: int = knob(0, "seed of the initial weights, the batch order and the crops")
    launcher: str = knob("inprocess", "inprocess: this process (torchrun-compatible); local/slurm: submitit; "
                         "auto: slurm if a Slurm controller answers, else inprocess",
                         choices=("auto", "inprocess", "local", "slurm"))


@dataclass(kw_only=True)
class TrainJob(TrainSettings):
    """One `par train` run: the recipe plus where it reads and writes."""

    data: str = knob("", "token directory written by `par tokenize` (shards + manifest.json)", required=True)
    out: str = knob("", "run directory: ckpt.pt (resumable), model.pt (final), log.jsonl", required=True)
    curve_tokens: str = knob("", "held-out token directory (`par tokenize` of the held-out split) of the learning "
                                 "curve; empty = no curve")


@dataclass(kw_only=True)
class SlurmPlacement:
    """Which part of a Slurm cluster a job may run on (empty: the cluster's default)."""

    partition: str = knob("", "Slurm partition")
    account: str = knob("", "Slurm account")
    qos: str = knob("", "Slurm QoS")
    constraint: str = knob("", "Slurm node features, e.g. a100")

    def placement(self) -> dict:
        """The placement keys that are set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SlurmPlacement) if getattr(self, f.name)}


@dataclass(kw_only=True)
class ClusterSettings(SlurmPlacement):
    """Where `par train --launcher local|slurm` runs (submitit parameters)."""

    nodes: int = knob(1, "nodes", minimum=1)
    gpus_per_node: int = knob(0, "GPUs per node", minimum=0)
    tasks_per_node: int = knob(0, "tasks per node; 0 → one per GPU (at least 1)", minimum=0)
    cpus_per_task: int = knob(4, "CPUs per task", minimum=1)
    mem_gb: int = knob(0, "memory per node in GB; 0 → the partition's default", minimum=0)
    time_min: int = knob(24 * 60, "time limit per job in minutes (the run requeues across limits)", minimum=1)
    max_requeues: int = knob(200, "requeues on timeout or preemption before giving up", minimum=0)
    signal_delay_s: int = knob(90, "seconds between Slurm's USR2 and the kill (time for a checkpoint)", minimum=0)
    poll_s: float = knob(10.0, "seconds between queue polls while waiting for the job", minimum=0)

    @property
    def ntasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


# ================================================================================================ sampling (Fig. 4)

@dataclass(kw_only=True)
class SamplingSettings:
    """How tokens are drawn from the logits (the decoder of Fig. 4)."""

    cfg_scale: float = knob(1.0, "classifier-free guidance scale; 1 = no guidance", minimum=0)
    cfg_interval: int = knob(-1, "guidance only while the reference's call counter ≤ this; −1 = at every call",
                             minimum=-1)
    temperature: float = knob(1.0, "softmax temperature; 0 = greedy (argmax)", minimum=0)
    top_k: int = knob(0, "keep the k most likely tokens; 0 = off", minimum=0)
    top_p: float = knob(1.0, "nucleus sampling mass; 1 = off", minimum=0, maximum=1)
    # ARPG (order arpg) only; the defaults are the reference sampler's (spec §12.3, golden README Q4–Q8)
    arpg_steps: int = knob(64, "ARPG: forward calls per image S (its README's 64; the reference script's --step "
                                "defaults to 256)", minimum=1)
    arpg_schedule: str = knob("arccos", "ARPG: tokens per step, arccos (the sampler's default) or cosine (the "
                                        "paper's table)", choices=("arccos", "cosine"))
    arpg_cfg_schedule: str = knob("linear", "ARPG: CFG scale per step, linear 1 + (s − 1)·decoded/N (the "
                                            "default) or constant s; the batch is always doubled",
                                  choices=("linear", "constant"))
    arpg_order: str = knob("batch", "ARPG: one random order per batch (the reference) or per sample",
                           choices=("batch", "sample"))
    arpg_filters: bool = knob(False, "ARPG: apply top_k / top_p (the reference sampler never passes them)")


@dataclass(kw_only=True)
class SampleSettings(SamplingSettings):
    """An evaluation sampling run (paper §5: 50k class-conditional samples)."""

    num_samples: int = knob(50_000, "number of samples", minimum=1)
    labels: str = knob("random", "class labels of the samples: random (LlamaGen / PAR's protocol) or balanced "
                                 "(sample i gets class i mod C: 50 per class at 50k, ADM / ARPG's protocol)",
                       choices=("random", "balanced"))
    shard_size: int = knob(1000, "samples per shard (the unit of restart and parallelism)", minimum=1)
    batch_size: int = knob(32, "images per forward batch", minimum=1)
    seed: int = knob(0, "global seed; shard k uses (seed, k), so results do not depend on the number of tasks")
    image_size: int = knob(256, "output image side (bicubic resize of the VQ decode)", minimum=8)
    weights: str = knob("model", "which weights to sample: model, or ema (a run trained with ema)",
                        choices=("model", "ema"))
    compile: bool = knob(False, "torch.compile the decode step over a static KV cache (CUDA graphs on GPU)")


@dataclass(kw_only=True)
class SampleJob(SampleSettings):
    """One `par sample` folder: the settings plus inputs, output and device."""

    model: str = knob("", "checkpoint: ours (carries its config) or a released one (then set size/order/n)",
                      required=True)
    vq: str = knob("", "VQ tokenizer checkpoint", required=True)
    out: str = knob("", "output folder: shards/, samples.npz, grid.png, sampling.json", required=True)
    device: str = knob("auto", DEVICE_HELP)
    dtype: str = knob("auto", "auto (bf16 on GPU as the reference sampler, fp32 on CPU), bf16 or fp32",
                      choices=("auto", "bf16", "fp32"))
    size: str = knob("", "released checkpoints only (they carry no config): model size, e.g. GPT-3B")
    order: str = knob("par", "released checkpoints only: token order", choices=("par", "raster", "arpg"))
    n: int = knob(4, "released checkpoints only: tokens per step", minimum=1)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)


# ================================================================================================ data and tokenizer

@dataclass(kw_only=True)
class TinysetSettings:
    """The offline tiny image set (crops of scikit-image's bundled photos)."""

    images_per_class: int = knob(400, "images per class", minimum=1)
    size: int = knob(64, "image side in pixels", minimum=8)
    seed: int = knob(0, "seed of the crops and augmentations")


@dataclass(kw_only=True)
class SplitSettings:
    """A preset's own images and their held-out split (`par prepare-images`): what trains, what is held out."""

    images: str = knob("", "imagefolder: ImageFolder root (one sub-folder per class); idx: the training images "
                       "IDX file (gzipped or not)")
    labels: str = knob("", "idx: the training labels IDX file")
    heldout_images: str = knob("", "the held-out split: an ImageFolder root, or (idx) the test images IDX file; "
                               "empty (imagefolder) → hold out `heldout_fraction` of every class")
    heldout_labels: str = knob("", "idx: the test labels IDX file")
    heldout_fraction: float = knob(0.1, "imagefolder without heldout_images: fraction of every class held out",
                                   minimum=0, maximum=1)
    pad_to: int = knob(0, "idx: zero-pad images to this square side (28 → 32 for a 16×16 grid); 0 = as stored",
                       minimum=0)
    train_images: int = knob(0, "keep a fixed random subset of this many training images (0 = all): enough "
                             "for a short run, and tokenizing fewer is faster", minimum=0)


@dataclass(kw_only=True)
class PrepareImagesJob(SplitSettings):
    """One `par prepare-images` run."""

    source: str = knob("idx", "idx (IDX file pairs) or imagefolder", choices=("idx", "imagefolder"))
    seed: int = knob(0, "seed of the held-out draw (imagefolder without heldout_images)")
    out: str = knob("", "output folder: train/, test/, images.json", required=True)


@dataclass(kw_only=True)
class DataSettings(SplitSettings):
    """Where a preset's images come from; the held-out split gives the FID reference, the floors and the NLL."""

    source: str = knob("tinyset", "tinyset (generated offline), idx (IDX file pairs such as Fashion-MNIST), "
                       "imagefolder (your images), or none: released weights scored against reference statistics "
                       "only (no training, NLL, entropy analysis or floors)",
                       choices=("tinyset", "idx", "imagefolder", "none"))
    tinyset: TinysetSettings = knob(factory=TinysetSettings, help="the tiny set's generator settings")
    reference_seed: int = knob(1, "tinyset: seed of a second, disjoint draw (the held-out split)")
    reference_images: int = knob(0, "held-out images packed into the FID reference (0 = all)", minimum=0)
    floor_images: int = knob(0, "further held-out images (disjoint from the reference) for the real and "
                             "VQ-reconstruction floors; 0 = no floors", minimum=0)
    reference_stats: str = knob("", "precomputed FID reference statistics (ADM npz with mu/sigma)")
    reference_stats_url: str = knob("", "download URL of the reference statistics (fetched once by `par fetch`)")
    reference_stats_sha256: str = knob("", "expected sha256 of the downloaded reference statistics")


VIDEO_SOURCES = ("moving-mnist", "ucf101")


@dataclass(kw_only=True)
class VideoSettings:
    """A preset's video clips: which source, and the clip shape every source produces."""

    source: str = knob("moving-mnist", "moving-mnist (generated offline from Fashion-MNIST) or ucf101 (AVI files "
                       "and the official split lists)", choices=VIDEO_SOURCES)
    frames: int = knob(17, "frames per clip", minimum=1)
    fps: float = knob(8.0, "clip frame rate: ucf101 picks the source frame nearest to each 1/fps step; "
                      "moving-mnist only records it", minimum=0.001)
    size: int = knob(0, "frame side in pixels; 0 → the source's own (moving-mnist 64, ucf101 128)", minimum=0)
    seed: int = knob(0, "moving-mnist: the images, start positions and directions; ucf101: each video's clip "
                     "start and the subset")
    num_videos: int = knob(0, "moving-mnist: clips to generate (0 → one per image of the split); ucf101: keep a "
                           "fixed random subset of this many videos of the split (0 = all)", minimum=0)
    shard_size: int = knob(256, "clips per shard file (one unit of work and of resuming)", minimum=1)
    idx_dir: str = knob("/usr/share/datasets/fashion-mnist", "moving-mnist: folder of the IDX files "
                        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (Debian's dataset-fashion-mnist)")
    items: int = knob(1, "moving-mnist: items bouncing in each clip; the clip's class is the first one's",
                      minimum=1, maximum=4)
    speed: float = knob(3.0, "moving-mnist: pixels per frame of every item (random direction)", minimum=0)
    item_size: int = knob(28, "moving-mnist: item side in pixels (the 28-px images, resized when smaller)", minimum=4,
                          maximum=28)
    root: str = knob("", "ucf101: the folder with one sub-folder per class (UCF-101/ of UCF101.rar)")
    lists: str = knob("", "ucf101: the folder with classInd.txt, trainlist0N.txt, testlist0N.txt; empty → "
                      "ucfTrainTestlist/ inside root or beside it")
    split_index: int = knob(1, "ucf101: the official split, 1, 2 or 3", choices=(1, 2, 3))


@dataclass(kw_only=True)
class PrepareVideoJob(VideoSettings):
    """One `par prepare-video` process (one slot of a Slurm array, or the whole job)."""

    split: str = knob("train", "train or test: moving-mnist draws from the IDX train or t10k files, ucf101 reads "
                      "trainlist0N or testlist0N", choices=("train", "test"))
    out: str = knob("", "output folder: clips-*.npz, manifest.json", required=True)
    workers: int = knob(0, "decoding processes per slot; 0 = in this process", minimum=0)


@dataclass(kw_only=True)
class VQTrainSettings:
    """A small VQ tokenizer trained from scratch (the CPU presets' stand-in for LlamaGen's VQ-16)."""

    image_size: int = knob(48, "the tokenizer's input size downstream (held-out metrics use it)", minimum=8)
    train_crop: int = knob(0, "random crop side for training; 0 → image_size (the net is convolutional)",
                           minimum=0)
    ch: int = knob(32, "base channel width", minimum=1)
    ch_mult: str = knob("1,2,2", "channel multiplier per level; downsampling = 2^(levels − 1)")
    z_channels: int = knob(32, "latent channels before the quantizer", minimum=1)
    res_blocks: int = knob(1, "ResBlocks per level, encoder and decoder (VQ-16 uses 2 / 3)", minimum=1)
    codebook_size: int = knob(512, "codebook entries (the GPT's vocabulary)", minimum=2)
    codebook_embed_dim: int = knob(8, "codebook vector dimension", minimum=1)
    steps: int = knob(300, "optimizer steps", minimum=1)
    batch_size: int = knob(32, "images per step", minimum=1)
    lr: float = knob(1e-3, "Adam learning rate", minimum=0)
    crop_range: float = knob(1.1, "ADM centre crop to int(image_size · crop_range), then random crops",
                             minimum=1)
    restart_every: int = knob(10, "replace codes unused in the last window by encoder outputs; 0 = off", minimum=0)
    heldout: int = knob(128, "images kept out of training for the metrics", minimum=1)
    rfid_images: int = knob(0, "> 0: also rFID on that many held-out images (Inception on CPU is slow)", minimum=0)
    device: str = knob("auto", "where to train: " + DEVICE_HELP)
    seed: int = knob(0, "seed of the split, the initial weights and the batches")


@dataclass(kw_only=True)
class VideoVQTrainSettings:
    """The MAGVIT-v2-style video tokenizer (`par train-video-vq`): a causal 3D CNN and lookup-free quantization."""

    frames: int = knob(17, "frames per training window, 1 + k · the temporal factor (random windows of the clips; "
                           "shorter = cheaper steps); the metrics use whole clips", minimum=1)
    bits: int = knob(10, "LFQ bits; vocabulary 2^bits (the paper: 16 → 65,536; MAGVIT-v2: 18)", minimum=1)
    ch: int = knob(8, "base width (the paper's size: 128)", minimum=1)
    ch_mult: str = knob("1,2,2,4", "width multiplier per level; spatial downsampling 2^(levels − 1)")
    temporal_downsample: str = knob("0,1,1", "per level transition, 1 = also halve time (0,1,1: 4× → 17 frames to 5)")
    res_blocks: int = knob(1, "ResBlocks per level (the paper's size: 4)", minimum=1)
    pad_mode: str = knob("replicate", "causal time padding: repeat the first frame, or zeros",
                         choices=("replicate", "zeros"))
    commit_beta: float = knob(0.25, "LFQ commitment weight", minimum=0)
    entropy_weight: float = knob(0.1, "weight of the entropy penalty (per-sample minus codebook entropy)", minimum=0)
    entropy_temperature: float = knob(0.01, "τ of the soft code assignment in the entropy terms", minimum=0)
    entropy_exact_bits: int = knob(10, "codebook entropy exact up to this many bits, else summed over bit groups",
                                   minimum=1)
    recon_loss: str = knob("l2", "reconstruction loss (no GAN / perceptual loss)", choices=("l2", "l1"))
    steps: int = knob(300, "optimizer steps", minimum=1)
    batch_size: int = knob(4, "clips per step", minimum=1)
    lr: float = knob(1e-3, "Adam learning rate (cosine to 0)", minimum=0)
    flip: bool = knob(True, "random horizontal flips")
    heldout: int = knob(16, "clips held out of training for the metrics", minimum=1)
    device: str = knob("", DEVICE_HELP)
    seed: int = knob(0, "seed of the split, the weights and the batches")


@dataclass(kw_only=True)
class VideoVQTrainJob(VideoVQTrainSettings):
    """One `par train-video-vq` run."""

    clips: str = knob("", "clip folder written by `par prepare-video` (the train split)", required=True)
    test_clips: str = knob("", "the held-out split's clip folder: its PSNR is reported as 'test'")
    out: str = knob("", "output folder: video_vq.pt, video_vq_metrics.json", required=True)


@dataclass(kw_only=True)
class VideoTokenizeSettings:
    """Video pre-tokenization (`par tokenize-video`): every clip and its horizontal flip, one token shard per
    clip shard."""

    batch_size: int = knob(8, "clips per tokenizer forward", minimum=1)
    flip: bool = knob(True, "also the horizontally flipped clip (a second 'crop': training draws one of the two)")
    device: str = knob("", DEVICE_HELP)


@dataclass(kw_only=True)
class VideoTokenizeJob(VideoTokenizeSettings):
    """One `par tokenize-video` process (one slot of a Slurm array, or the whole job)."""

    clips: str = knob("", "clip folder written by `par prepare-video`", required=True)
    vq: str = knob("", "video tokenizer checkpoint (`par train-video-vq`)", required=True)
    out: str = knob("", "output folder: shard-*.npz (the `par tokenize` format, grid t×h×w) + manifest.json",
                    required=True)


@dataclass(kw_only=True)
class VideoTokenizerSettings:
    """The preset's video tokenizer: a local checkpoint, or one trained by `par train-video-vq`."""

    checkpoint: str = knob("", "a local video tokenizer checkpoint (skips training)")
    train: VideoVQTrainSettings = knob(factory=VideoVQTrainSettings, help="settings of `par train-video-vq`")


@dataclass(kw_only=True)
class FVDSettings:
    """FVD of a preset's video samples: TF-Hub's Kinetics-400 I3D logits against a fixed draw of train clips."""

    frames: int = knob(16, "frames of every clip the I3D sees, the first F (16 of 17, as MAGVIT); 0 = all",
                       minimum=0)
    reference_clips: int = knob(0, "train clips of the reference statistics: a fixed random draw of this many; 0 = "
                                   "the whole train split (MAGVIT's protocol)", minimum=0)
    floor_clips: int = knob(0, "held-out clips of the floors (real clips, and through the tokenizer = rFVD); 0 = no "
                               "floors", minimum=0)
    batch_size: int = knob(8, "clips per I3D forward", minimum=1)
    bootstrap: int = knob(50, "resamples of the generated clips for the standard error of one run's FVD", minimum=0)
    device: str = knob("auto", "torch device of the I3D: " + DEVICE_HELP)


@dataclass(kw_only=True)
class VideoStage:
    """The video half of a preset (Table 4): clips, the video tokenizer, its tokens and FVD. Models with
    `modality: video` train and sample on it."""

    clips: VideoSettings = knob(factory=VideoSettings, help="the clips of both splits (`par prepare-video`)")
    heldout_videos: int = knob(0, "held-out (test split) clips: moving-mnist generates this many, ucf101 keeps a "
                                  "fixed random subset (0 = one per image / all)", minimum=0)
    tokenizer: VideoTokenizerSettings = knob(factory=VideoTokenizerSettings, help="the video tokenizer")
    tokenize: VideoTokenizeSettings = knob(factory=VideoTokenizeSettings, help="video pre-tokenization")
    array_tasks: int = knob(1, "parallel jobs of clip making and of tokenization (each takes every k-th shard)",
                            minimum=1)
    fvd: FVDSettings = knob(factory=FVDSettings, help="FVD (Table 4)")


@dataclass(kw_only=True)
class TokenizerSettings:
    """The preset's VQ tokenizer: a local file, a release to download, or one trained by `par train-vq`."""

    checkpoint: str = knob("", "a local VQ checkpoint (skips training and download)")
    url: str = knob("", "download URL of a released tokenizer (fetched once by `par fetch`)")
    sha256: str = knob("", "expected sha256 of the downloaded tokenizer")
    train: VQTrainSettings = knob(factory=VQTrainSettings, help="settings of `par train-vq` when neither is given")


@dataclass(kw_only=True)
class VQTrainJob(VQTrainSettings):
    """One `par train-vq` run."""

    images: str = knob("", "ImageFolder root", required=True)
    test_images: str = knob("", "the preset's held-out split (ImageFolder root): PSNR on it is reported as 'test'")
    out: str = knob("", "output folder: vq.pt, vq_metrics.json", required=True)


@dataclass(kw_only=True)
class TokenizeSettings:
    """Ten-crop pre-tokenization (LlamaGen extract_codes_c2i.py --ten-crop, spec §8.1)."""

    image_size: int = knob(384, "crop side fed to the VQ", minimum=8)
    crop_range: float = knob(1.1, "ADM centre crop to int(image_size · crop_range) before the ten crops", minimum=1)
    shard_size: int = knob(1000, "images per shard", minimum=1)
    batch_size: int = knob(4, "images per VQ batch (× 10 crops)", minimum=1)


@dataclass(kw_only=True)
class TokenizeJob(TokenizeSettings):
    """One `par tokenize` process (one slot of a Slurm array, or the whole job)."""

    images: str = knob("", "ImageFolder root (one sub-folder per class, sorted → labels 0..C−1)")
    vq: str = knob("", "VQ checkpoint (LlamaGen vq_ds16_c2i.pt, or one written by `par train-vq`)")
    out: str = knob("", "output folder: shard-*.npz, manifest.json", required=True)
    device: str = knob("", DEVICE_HELP)
    workers: int = knob(-1, "image-decoding worker processes; −1 → min(8, cpus − 1)", minimum=-1)


@dataclass(kw_only=True)
class TokenizeStage(TokenizeSettings):
    """The preset's tokenize section: the settings, and how many cluster tasks share the work."""

    array_tasks: int = knob(1, "parallel tokenization jobs (each takes every k-th shard; a cluster runs them "
                               "side by side), then one job writes the manifest", minimum=1)


# ================================================================================================ evaluation and §8

@dataclass(kw_only=True)
class EvaluateSettings:
    """Sample-quality metrics (torch-fidelity, offline FID Inception)."""

    metrics: str = knob("fid,kid,prc,isc", "comma list of fid, isc, kid, prc (Inception features); empty = no "
                        "Inception metrics")
    batch_size: int = knob(64, "images per Inception batch", minimum=1)
    inception_images: int = knob(0, "use only the first N samples and reference images for the Inception "
                                 "metrics (slow on a CPU); 0 = all", minimum=0)
    classifier: bool = knob(True, "also FID/KID on the features of a classifier trained on the train split, and "
                            "the class accuracy of the samples (`par train-classifier`)")
    kid_blocks: int = knob(10, "classifier KID: mean over this many disjoint sample/reference blocks, whose "
                           "spread gives its standard error", minimum=2)


@dataclass(kw_only=True)
class ClassifierSettings:
    """A small CNN classifier of the preset's images: a feature space that fits the data (FID/KID), and a judge
    of whether a sample shows the class it was asked for."""

    image_size: int = knob(32, "input side (images are centre-cropped / resized to it)", minimum=8)
    width: int = knob(32, "channels of the first block (doubled at each of the 3 blocks)", minimum=4)
    epochs: float = knob(3, "passes over the train split", minimum=0)
    batch_size: int = knob(128, "images per step", minimum=1)
    lr: float = knob(3e-3, "AdamW learning rate (cosine to 0)", minimum=0)
    seed: int = knob(0, "seed of the weights and the batches")


@dataclass(kw_only=True)
class ClassifierJob(ClassifierSettings):
    """One `par train-classifier` run."""

    images: str = knob("", "train split (ImageFolder root)", required=True)
    heldout: str = knob("", "held-out split (ImageFolder root) for the test accuracy", required=True)
    out: str = knob("", "output folder: classifier.pt, metrics.json", required=True)


@dataclass(kw_only=True)
class NLLSettings:
    """Held-out likelihood: teacher-forced NLL per token on the held-out split's centre-crop tokens."""

    images: int = knob(0, "held-out images scored: a fixed random draw of this many (0 = all)", minimum=0)
    batch_size: int = knob(256, "images per forward batch", minimum=1)
    arpg_orders: int = knob(4, "ARPG: random orders per image; its NLL is their average, an upper bound on the "
                               "NLL of the model's mixture over orders", minimum=1)
    seed: int = knob(0, "seed of the held-out draw and of ARPG's random orders")
    device: str = knob("auto", "where to score: " + DEVICE_HELP + "; fp32 (TF32 matmuls on a GPU): NLL differences "
                               "of 0.01 nats matter, bf16 logits would blur them")


@dataclass(kw_only=True)
class EntropySettings:
    """The conditional-entropy analysis of §8 (Fig. 9 maps and the Fig. 11 entropy increase)."""

    num_images: int = knob(1000, "images whose tokens are analysed", minimum=10)
    references: list[list[int]] = knob(factory=lambda: [[0, 0]], help="reference cells [row, col] of the maps")
    n: int = knob(4, "tokens per parallel step for the entropy increase", minimum=1)
    estimator: str = knob("linear", "predictor f_θ of the residuals: linear (ridge) or mlp", choices=("linear", "mlp"))
    alpha: float = knob(1e-3, "ridge penalty of the linear estimator", minimum=0)


# ================================================================================================ workflow

@dataclass(kw_only=True)
class Resources(SlurmPlacement):
    """What one job of a stage asks the scheduler for."""

    nodes: int = knob(1, "nodes (training only)", minimum=1)
    gpus: int = knob(0, "GPUs per node", minimum=0)
    cpus: int = knob(1, "CPUs per task", minimum=1)
    mem_mb: int = knob(2000, "memory in MB", minimum=100)
    runtime: int = knob(30, "time limit in minutes", minimum=1)
    gpu_mem_gb: float = knob(80.0, "memory of one of its GPUs: `par plan` refuses a training job that does not fit",
                             minimum=1)

    def snakemake(self) -> dict:
        """Snakemake resources, named as snakemake-executor-plugin-slurm reads them."""
        out = {"mem_mb": self.mem_mb, "runtime": self.runtime, "cpus_per_task": self.cpus}
        if self.gpus:
            out["gpu"] = self.gpus
        names = {"partition": "slurm_partition", "account": "slurm_account"}
        return out | {names.get(k, k): v for k, v in self.placement().items()}

    def cluster(self) -> dict:
        """The same request as `par train` cluster settings (submitit)."""
        return {"nodes": self.nodes, "gpus_per_node": self.gpus, "cpus_per_task": self.cpus,
                "time_min": self.runtime, "mem_gb": self.mem_mb // 1000} | self.placement()


@dataclass(kw_only=True)
class ModelEntryExtras:
    """Keys a model entry has besides its train and sample settings."""

    checkpoint: str = knob("", "released weights (a local file): this model is not trained")
    checkpoint_url: str = knob("", "released weights to download (fetched once by `par fetch`): not trained")
    checkpoint_sha256: str = knob("", "expected sha256 of the downloaded weights")
    score_nll: bool = knob(True, "held-out NLL for this model (off for released weights trained on another token "
                                 "grid, e.g. ARPG's 16×16 tokens of 256-px images beside 384-px data)")
    trained_as: str = knob("", "sample the trained runs of this other model entry (same weights, same seeds) with "
                               "this entry's sample settings, e.g. ARPG at another step count")
    seeds: int = knob(1, "training runs with seeds seed, seed+1, …; tables report mean ± standard error",
                      minimum=1)
    resources: str = knob("train", "name of the resources entry of its training job")
    modality: str = knob("images", "what the model generates: images (the preset's image tokens) or video (the "
                                   "tokens of its `video` section; Table 4)", choices=("images", "video"))


def _model_entry_class():
    """A model entry takes any train or sample setting (it overrides the preset's sections for this model)."""
    seen, fields = set(), []
    for cls in (TrainSettings, SampleSettings, ModelEntryExtras):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in seen and f.name != "launcher":
                seen.add(f.name)
                meta = dict(f.metadata) | {"required": f.name in ("size", "order", "n")}
                fields.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory,
                                                     metadata=meta)))
    return dataclasses.make_dataclass("ModelEntry", fields, kw_only=True, namespace={
        "__doc__": "One model of a preset: its train and sample settings.", "__module__": __name__})


ModelEntry = _model_entry_class()


@dataclass(kw_only=True)
class Preset:
    """A complete experiment family: data, tokenizer, models, and how each stage runs."""

    data: DataSettings = knob(factory=DataSettings, help="images and FID reference")
    tokenizer: TokenizerSettings = knob(factory=TokenizerSettings, help="the VQ tokenizer")
    tokenize: TokenizeStage = knob(factory=TokenizeStage, help="ten-crop pre-tokenization")
    train: TrainSettings = knob(factory=TrainSettings, help="training settings shared by every model")
    models: dict[str, ModelEntry] = knob(factory=dict, help="model name → its settings", required=True)
    sample: SampleSettings = knob(factory=SampleSettings, help="sampling settings shared by every model")
    evaluate: EvaluateSettings = knob(factory=EvaluateSettings, help="sample-quality metrics")
    classifier: ClassifierSettings = knob(factory=ClassifierSettings, help="the feature classifier of the metrics")
    nll: NLLSettings = knob(factory=NLLSettings, help="held-out NLL per token")
    entropy: EntropySettings = knob(factory=EntropySettings, help="§8 entropy analysis")
    video: VideoStage = knob(factory=VideoStage, help="the video half (models with modality: video)")
    resources: dict[str, Resources] = knob(factory=lambda: {"default": Resources()},
                                           help="stage name → scheduler request; `default` applies to every stage")

    def resources_for(self, stage: str) -> Resources:
        """`resources.<stage>` over `resources.default`, key by key as they are written in the file."""
        raw = getattr(self, "_written_resources", None) or {k: dataclasses.asdict(v) for k, v in self.resources.items()}
        return Resources(**(raw.get("default", {}) | raw.get(stage, {})))


@dataclass(kw_only=True)
class WorkflowConfig:
    """config.yaml: the active preset, the presets, and which models fill which table."""

    preset: str = knob("tiny", "name of the active preset under `presets`")
    allow_unpinned: bool = knob(False, "download released files whose sha256 is not pinned in the config: the first "
                                       "download pins it in <file>.sha256, which later runs verify")
    results: str = knob("results", "intermediate files: <results>/<preset>/…")
    analysis: str = knob("analysis", "tables, figures and the report (what people read)")
    presets: dict[str, Preset] = knob(factory=dict, help="preset name → preset", required=True)
    tables: dict[str, dict[str, list[str]]] = knob(factory=dict, required=True,
                                                   help="table → row label → candidate models (first present wins)")


# ================================================================================================ checking

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _closest(key: str, options) -> str:
    near = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"did you mean {near[0]}?" if near else f"known keys: {', '.join(sorted(options))}"


# A number as YAML 1.2 (and people) write it. PyYAML reads YAML 1.1, where `2e-3` and `1e5` are strings (1.1 wants
# a dot and a signed exponent: 2.0e-3), so float settings accept these strings.
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _check_value(typ, value, where: str):
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return check(typ, value, where)
    if origin is dict:
        key_t, val_t = typing.get_args(typ)
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {k: _check_value(val_t, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_t,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(item_t, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{where}: settings type {typ} is not supported")
    if not ok:
        raise UserError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_limits(f: dataclasses.Field, value, where: str) -> None:
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, m['choices']))}")
    if m.get("minimum") is not None and value < m["minimum"]:
        raise UserError(f"{where}: {value!r} is below the minimum {m['minimum']}")
    if m.get("maximum") is not None and value > m["maximum"]:
        raise UserError(f"{where}: {value!r} is above the maximum {m['maximum']}")


def check(cls, data, where: str, *, require: bool = True):
    """`data` (a mapping from YAML/JSON) as a `cls` instance. Unknown keys, wrong types, values outside their
    limits and missing required keys fail with one line naming the key's path, e.g.
    ``presets.tiny.train.lrr: unknown; did you mean lr?``. A float written as a YAML 1.1 string (`2e-3`) is
    replaced by the number in `data` itself, so that whoever reads the mapping later (the schema check, the
    resources as written) sees the number too."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of {cls.__name__} settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise UserError(f"{path}: unknown; {_closest(str(key), fields)}")
        values[key] = _check_value(hints[key], value, path)
        if hints[key] is float and isinstance(value, str):
            data[key] = values[key]
        if not dataclasses.is_dataclass(hints[key]) and typing.get_origin(hints[key]) is None:
            _check_limits(fields[key], values[key], path)
    for name, f in fields.items():
        if require and f.metadata.get("required") and name not in data:
            raise UserError(f"{where + '.' if where else ''}{name}: required")
    obj = cls(**values)
    if cls is Preset:
        obj._written_resources = data.get("resources", {"default": {}})
        if "default" not in obj.resources:
            raise UserError(f"{where}.resources.default: required (the scheduler request of every stage)")
    return obj


def check_workflow_config(config: dict, where: str = "config") -> WorkflowConfig:
    """The whole config.yaml, checked; also that the active preset exists and every table names known models."""
    cfg = check(WorkflowConfig, config, "")
    if cfg.preset not in cfg.presets:
        raise UserError(f"preset: {cfg.preset!r} is not defined under presets ({', '.join(sorted(cfg.presets))})")
    return cfg


def field_metadata(cls, name: str) -> dict:
    """A field's help, choices and limits (e.g. to share a setting's choices with a hand-written flag)."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def required_missing(obj) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.metadata.get("required") and not getattr(obj, f.name)]


def load_file(path: str | Path) -> dict:
    """A YAML or JSON settings file as a mapping; a missing or unreadable file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else __import__("yaml").safe_load(text)
    except Exception as e:  # noqa: BLE001 — yaml and json raise their own error classes
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})") from None
    return data if data is not None else {}


BASE_CONFIG = "config.yaml"  # what `--config` overlays, as Snakemake's `--configfile` overlays the Snakefile's


def merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base` mapping by mapping; any other value replaces (Snakemake's rule for
    `--configfile` and `--config`)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else value
    return out


def config_layer(arg: str) -> tuple[str, dict]:
    """(name, mapping) of one `--config` argument: a YAML/JSON file, or KEY=VALUE with a dotted KEY and a YAML
    VALUE (`presets.paper.train.lr=2e-3`)."""
    key, eq, value = arg.partition("=")
    if not eq or Path(arg).exists():
        return arg, load_file(arg)
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise UserError(f"--config {arg}: expected a config FILE or KEY=VALUE with a dotted key, e.g. "
                        "presets.paper.train.lr=2e-3")
    if key == "preset":
        raise UserError(f"--config {arg}: pick the preset with --preset {value}")
    import yaml

    try:
        data = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise UserError(f"--config {arg}: the value is not valid YAML ({e})") from None
    for part in reversed(key.split(".")):
        data = {part: data}
    return f"--config {arg}", data


def _blame(message: str, layers: list[tuple[str, dict]]) -> str:
    """The layer that wrote the key a check message starts with (the last one holding it), else all of them."""
    node_path = re.sub(r"\[\d+\]", "", message.split(":", 1)[0]).split(".")
    for name, data in reversed(layers):
        node = data
        for part in node_path:
            node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
        if node is not MISSING:
            return name
    return " + ".join(name for name, _ in layers)


def load_config(config: str | Path | list | None, preset: str) -> tuple[dict, dict]:
    """The workflow config checked as a whole (as the Snakefile checks it), and its `preset` section, as mappings
    (`par tables/report/plan --config … --preset …`). `config`: one complete file; or the `--config` arguments
    (a list, maybe empty), merged in order over `config.yaml` when that exists: a partial file or KEY=VALUE
    changes only what it names, as Snakemake's `--configfile` and `--config` do. A bad key is named with the file
    (or KEY=VALUE) that wrote it."""
    if isinstance(config, (str, Path)):
        layers = [(str(config), load_file(config))]
    else:
        args = list(config or [])
        base = [(BASE_CONFIG, load_file(BASE_CONFIG))] if Path(BASE_CONFIG).exists() or not args else []
        layers = base + [config_layer(str(a)) for a in args]
    raw: dict = {}
    for name, data in layers:
        if not isinstance(data, dict):
            raise UserError(f"{name}: expected a mapping of config keys, got {type(data).__name__}")
        raw = merge(raw, data)
    try:
        check_workflow_config({**raw, "preset": preset})
    except UserError as e:
        raise UserError(f"{_blame(str(e), layers)}: {e}") from None
    return raw, raw["presets"][preset]


# ================================================================================================ command line

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    import argparse

    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser, cls, *, group: str | None = None, dest_prefix: str = "") -> None:
    """One `--flag` per field of `cls`, with its help, choices and default (argparse default None, so a
    `--config` file can supply what the command line does not)."""
    target = parser.add_argument_group(group) if group else parser
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ) or typing.get_origin(typ) is not None:
            continue  # nested groups and lists are config-file only
        default = f.default if f.default is not MISSING else "required"
        if f.metadata.get("required"):
            default = "required"
        text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs = dict(dest=dest_prefix + f.name, default=None, help=text.replace("%", "%%"))
        if typ is bool:
            kwargs.update(type=_parse_bool, metavar="BOOL")
        else:
            kwargs.update(type=typ, metavar=typ.__name__.upper())
        if f.metadata.get("choices"):
            kwargs.update(choices=f.metadata["choices"], metavar=None)
        target.add_argument(_flag(f.name), **kwargs)


def add_run_arguments(parser, *, preset_default: str | None = None, results_required: bool = True) -> None:
    """`--config`, `--preset`, `--results`: which workflow run a reporting command reads."""
    parser.add_argument("--config", action="append", metavar="FILE|KEY=VALUE",
                        help=f"workflow config: {BASE_CONFIG}, with each FILE (whole or partial) or KEY=VALUE (dotted "
                             "key, YAML value: presets.paper.train.lr=2e-3) merged over it in order, as Snakemake's "
                             "--configfile and --config; repeatable")
    parser.add_argument("--preset", required=preset_default is None, default=preset_default,
                        help="preset under `presets`" + (f" (default: {preset_default})" if preset_default else ""))
    parser.add_argument("--results", required=results_required,
                        help="results/<preset> directory" + ("" if results_required else " (default: results/<preset>)"))


def from_args(cls, args, *, dest_prefix: str = "", config_file: str | None = None):
    """The `cls` settings of a command: its `--config` file (checked like a preset section), then the flags
    given on the command line over it. Required fields that are still empty are one clear error."""
    data = {}
    if config_file:
        data = load_file(config_file)
        check(cls, data, str(config_file), require=False)  # types and unknown keys, named by the file
    for f in dataclasses.fields(cls):
        v = getattr(args, dest_prefix + f.name, None)
        if v is not None:
            data[f.name] = v
    obj = check(cls, data, config_file or "command line", require=False)
    missing = required_missing(obj)
    if missing:
        raise UserError(f"{_flag(missing[0])} is required (or set '{missing[0]}' in --config)")
    return obj


def flags(cls, *layers: dict) -> list[str]:
    """`--key value` arguments for the fields of `cls` found in `layers` (later layers win), sorted."""
    merged = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k in {f.name for f in dataclasses.fields(cls)}})
    out = []
    for key in sorted(merged):
        v = merged[key]
        out += [_flag(key), ("true" if v else "false") if isinstance(v, bool) else str(v)]
    return out


# ================================================================================================ JSON schema

def _type_schema(typ) -> dict:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return {"$ref": f"#/$defs/{typ.__name__}"}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(typing.get_args(typ)[1])}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(typ)[0])}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[typ]}


def _class_schema(cls, defs: dict) -> None:
    if cls.__name__ in defs:
        return
    hints = _hints(cls)
    props, required = {}, []
    defs[cls.__name__] = {}  # reserve (recursion)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        s = _type_schema(typ)
        for inner in (typ, *typing.get_args(typ), *(a for t in typing.get_args(typ) for a in typing.get_args(t))):
            if dataclasses.is_dataclass(inner):
                _class_schema(inner, defs)
        m = f.metadata
        if "$ref" in s:
            s = {"allOf": [s]}
        s["description"] = m.get("help", "")
        if m.get("choices"):
            s["enum"] = list(m["choices"])
        if m.get("minimum") is not None:
            s["minimum"] = m["minimum"]
        if m.get("maximum") is not None:
            s["maximum"] = m["maximum"]
        if f.default is not MISSING and isinstance(f.default, (bool, int, float, str)):
            s["default"] = f.default
        if m.get("required"):
            required.append(f.name)
        props[f.name] = s
    defs[cls.__name__] = {"type": "object", "description": (cls.__doc__ or "").strip().splitlines()[0],
                          "additionalProperties": False, "properties": props,
                          **({"required": required} if required else {})}


def schema() -> dict:
    """JSON schema of config.yaml, derived from the dataclasses above."""
    defs: dict = {}
    _class_schema(WorkflowConfig, defs)
    top = defs.pop("WorkflowConfig")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "PAR workflow configuration. GENERATED from par/config.py by `par config schema`; "
                           "do not edit.", **{k: v for k, v in top.items() if k != "description"},
            "$defs": dict(sorted(defs.items()))}


def schema_yaml() -> str:
    import yaml

    return yaml.safe_dump(schema(), sort_keys=False, allow_unicode=True, width=120)


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


# ================================================================================================ `par config`

def _cmd_config(args) -> int:
    if args.action == "schema":
        text = schema_yaml()
        if args.check:
            if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
                raise UserError(f"{SCHEMA_PATH}: out of date with par/config.py; run `par config schema --write`")
            print(f"{SCHEMA_PATH}: up to date")
        elif args.write:
            from par.io import write_text

            write_text(SCHEMA_PATH, text)
            print(f"wrote {SCHEMA_PATH}")
        else:
            print(text, end="")
    else:
        cfg = check_workflow_config(load_file(args.file))
        print(f"{args.file}: ok ({len(cfg.presets)} presets, active: {cfg.preset})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("config", help="the settings: print the config schema, or check a config file")
    p.add_argument("action", choices=("schema", "check"), help="schema: the JSON schema of config.yaml; "
                   "check: check a config file")
    p.add_argument("file", nargs="?", default="config.yaml", help="config file to check (default: config.yaml)")
    p.add_argument("--write", action="store_true", help=f"schema: write it to {SCHEMA_PATH.name}")
    p.add_argument("--check", action="store_true", help="schema: fail if the committed schema is out of date")
    p.set_defaults(func=_cmd_config)
