"""`par train-classifier`: a small CNN trained on the train split — the feature space and the judge of samples.

Inception features suit ImageNet photos, not 32-px grey clothing: on such data an Inception FID mostly measures
resizing artefacts. A classifier trained on the preset's own train split gives a feature space that fits the
data (FID/KID on its penultimate layer, as e.g. the MNIST/CIFAR FIDs of the GAN literature do), and tells
whether a sample shows the class it was asked for (class accuracy). Its held-out accuracy is reported so a
reader knows how good the judge is. Writes ``<out>/classifier.pt`` and ``<out>/metrics.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from par import io
from par.config import ClassifierJob, add_arguments, from_args
from par.errors import UserError


def build_classifier(num_classes: int, width: int, image_size: int):
    """Three conv blocks (width, 2·width, 4·width; BN, ReLU, 2× pooling), global average pooling → feature,
    then a linear head. Input: float (B, 3, S, S) in [−1, 1]."""
    import torch.nn as nn

    layers, c_in = [], 3
    for k in range(3):
        c = width * 2 ** k
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = c
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("head", nn.Linear(c_in, num_classes))
    model.meta = {"num_classes": num_classes, "width": width, "image_size": image_size}
    return model


def _to_input(images_uint8, image_size: int):
    """uint8 NHWC (any size) → float NCHW in [−1, 1] at `image_size` (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(images_uint8, dtype=np.uint8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


def load_split(root: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC at image_size, labels) of an ImageFolder (ADM centre crop, as the reference set)."""
    from par.data.crops import center_crop_arr, list_images, load_rgb

    _, samples = list_images(root)
    x = np.stack([np.asarray(center_crop_arr(load_rgb(p), image_size), dtype=np.uint8) for p, _ in samples])
    return x, np.array([c for _, c in samples], dtype=np.int64)


def save_classifier(model, path) -> None:
    io.torch_save({"meta": model.meta, "state_dict": model.state_dict()}, path)


def load_classifier(path):
    """The classifier written by `par train-classifier`, in eval mode (weights_only load)."""
    ckpt = io.torch_load(path)
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a `par train-classifier` checkpoint (no meta/state_dict); retrain it")
    model = build_classifier(**ckpt["meta"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def features_and_logits(model, images_uint8, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, 4·width) and logits (N, classes) of uint8 NHWC images, float64."""
    import torch

    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            f = model.features(_to_input(images_uint8[i:i + batch_size], model.meta["image_size"]))
            feats.append(f.double().numpy())
            logits.append(model.head(f).double().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def _kid_block(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (Bińkowski et al.; as
    torch-fidelity's KID)."""
    d = a.shape[1]
    kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_with_se(feats: np.ndarray, ref: np.ndarray, blocks: int, seed: int = 0) -> tuple[float, float]:
    """KID as the mean over `blocks` disjoint (sample, reference) block pairs, and its standard error from the
    spread of the blocks (each block estimate is unbiased and independent, so SE = sd / √blocks).

    Both sets are shuffled (seeded) before they are cut: reference files are stored class-sorted, so contiguous
    blocks would each hold about one class while the samples come in random label order, and every block would
    compare different distributions (a large KID for identical ones)."""
    blocks = min(blocks, len(feats) // 2, len(ref) // 2)
    if blocks < 2:
        raise UserError(f"KID needs ≥ 4 samples and reference images, got {len(feats)} and {len(ref)}")
    rng = np.random.default_rng(seed)
    feats, ref = feats[rng.permutation(len(feats))], ref[rng.permutation(len(ref))]
    vals = np.array([_kid_block(a, b) for a, b in zip(np.array_split(feats, blocks), np.array_split(ref, blocks))])
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(blocks))


def reference_features(model, classifier_path, reference, reference_path=None) -> np.ndarray:
    """The classifier's features of the reference set, cached per (reference file, classifier file) content
    (`cached_features`): computed once per workflow instead of once per evaluated run (~30 s each on 2 CPU cores)."""
    import torch

    from par.eval.metrics.reference import cached_features

    # the image count is in the key: `--max-images` may score a prefix of the same reference file
    key = f"{io.sha256_file(classifier_path)}|{len(reference)}"
    feats = cached_features("classifier-reference", reference_path, key,
                            lambda: torch.from_numpy(features_and_logits(model, reference)[0]))  # a weights_only load
    return feats.numpy()


def sample_quality(classifier_path, samples, reference, labels=None, blocks: int = 10, reference_path=None) -> dict:
    """FID/KID (± SE) of uint8 NHWC `samples` against `reference` on the classifier's features, and (given the
    requested `labels`) the fraction of samples the classifier assigns to their requested class (± SE).
    `reference_path`: the file `reference` was read from, which keys the cache of its features."""
    import torch

    from par.eval.frechet import feature_statistics, frechet_distance

    model = load_classifier(classifier_path)
    f_s, logits = features_and_logits(model, samples)
    f_r = reference_features(model, classifier_path, reference, reference_path)
    kid, kid_se = kid_with_se(f_s, f_r, blocks)
    stats = [feature_statistics(torch.from_numpy(f)) for f in (f_s, f_r)]
    out = {"cls_fid": float(frechet_distance(*stats[0], *stats[1])),
           "cls_kid": kid, "cls_kid_se": kid_se, "class_accuracy": None, "class_accuracy_se": None,
           "n_samples": len(f_s), "n_reference": len(f_r)}
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(samples):
            raise UserError(f"{len(labels)} labels for {len(samples)} samples; the labels.npy beside the samples "
                            "is stale — resample")
        hit = logits.argmax(1) == labels
        out |= {"class_accuracy": float(hit.mean()), "class_accuracy_se": float(hit.std(ddof=1) / math.sqrt(len(hit)))}
    return out


def train_classifier(job: ClassifierJob) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(job.seed)
    x, y = load_split(job.images, job.image_size)
    tx, ty = load_split(job.heldout, job.image_size)
    classes = int(max(y.max(), ty.max())) + 1
    model = build_classifier(classes, job.width, job.image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(job.seed)
    per_epoch = max(1, len(x) // job.batch_size)
    total = max(1, int(job.epochs * per_epoch))
    t0 = time.perf_counter()
    from par.progress import progress

    model.train()
    for step in progress(range(total), "train-classifier"):
        for g in opt.param_groups:
            g["lr"] = job.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        idx = torch.randint(0, len(x), (job.batch_size,), generator=gen).numpy()
        xb = _to_input(x[idx], job.image_size)
        if torch.rand((), generator=gen) < 0.5:  # the same flip augmentation the ten-crop tokens carry
            xb = xb.flip(-1)
        loss = F.cross_entropy(model(xb), torch.as_tensor(y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    _, logits = features_and_logits(model, tx)
    correct = logits.argmax(1) == ty
    acc = float(correct.mean())
    metrics = {"test_accuracy": acc, "test_accuracy_se": float(correct.std(ddof=1) / math.sqrt(len(ty))),
               "n_test": len(ty), "n_train": len(y), "num_classes": classes, "steps": total,
               "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(job)}
    out = Path(job.out)
    save_classifier(model, out / "classifier.pt")
    io.write_json(out / "metrics.json", metrics)
    return metrics


def cmd_train_classifier(args) -> int:
    m = train_classifier(from_args(ClassifierJob, args))
    print(f"classifier: held-out accuracy {m['test_accuracy']:.4f} ± {m['test_accuracy_se']:.4f} "
          f"({m['n_test']} images, {m['steps']} steps, {m['seconds']:.0f} s)")
    return 0


def register(sub):
    p = sub.add_parser("train-classifier", help="small CNN on the train split: features for FID/KID, class accuracy")
    add_arguments(p, ClassifierJob)
    p.set_defaults(func=cmd_train_classifier)
