"""`par nll`: held-out negative log-likelihood per token, by teacher forcing on held-out tokens.

The training forward (§3.3) conditions every token on exactly what the sampler conditions it on: for n > 1,
the tokens of earlier groups plus the transition tokens, never the other members of its own group. So the sum
of the per-token log-probabilities is the exact log-likelihood of an image under the distribution the sampler
draws from (the product of the within-group conditionals), for any order and n. It compares orders and n on
one scale, with far less noise than a sample-based FID. Scored with the class label (no dropout, no CFG) on
the centre crop of the held-out split's tokens; the standard error is over images.

ARPG has no single order: it is trained on random permutations and samples one per batch. Its score is the
mean over `arpg_orders` random orders per image of the teacher-forced NLL in that order. By Jensen's inequality
this is an upper bound on −log of the order-averaged likelihood, and it scores training-style (causal) contexts,
not the block-bidirectional ones its sampler uses (Q3). It is reported beside PAR's exact NLL, marked as a bound.

Class information: the same images scored once more with the null class of CFG (label dropout trains it), and
NLL(null) − NLL(true label) per token reported beside the NLL. It says how much of the label a model uses (the
label carries at most log(classes) nats per image, so more means a null branch worse than the mixture of the class
branches), which is what class-conditional samples and CFG's guidance direction rest on (#24).
`par train --curve-tokens` scores a fixed draw of these images at its checkpoints: the learning curve.
"""

from __future__ import annotations

import math
import time

import numpy as np

from par.config import NLLSettings, add_arguments, from_args
from par.errors import UserError
from par.io import write_json


def random_orders(seed: int, image: int, orders: int, num_tokens: int):
    """ARPG's `orders` random orders of held-out image `image`: its own stream, so the score of an image does not
    depend on the batch it is scored in."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + image)
    return torch.rand(orders, num_tokens, generator=gen).argsort(dim=1)


def check_heldout(model, codes: np.ndarray, labels: np.ndarray) -> None:
    """Held-out tokens and labels the model can score (same tokenizer, grid and classes), else a one-line error."""
    if codes.shape[1] != model.num_tokens:
        raise UserError(f"held-out tokens have {codes.shape[1]} per image, the model {model.num_tokens}: "
                        "they come from another tokenizer or image size")
    if int(codes.max()) >= model.config.vocab_size or int(labels.max()) >= model.config.num_classes:
        raise UserError("held-out tokens or labels exceed the model's vocabulary / classes: another tokenizer or "
                        "dataset")


def heldout_nll(model, codes: np.ndarray, labels: np.ndarray, batch_size: int, orders: int = 1,
                seed: int = 0) -> np.ndarray:
    """Per-image mean NLL (nats per token) of raster-ordered `codes` (N, h·w) with class `labels` (N,); for ARPG
    averaged over `orders` random orders per image (drawn from `seed`)."""
    check_heldout(model, codes, labels)
    return _score(model, codes, labels, batch_size, orders, seed)


def has_null_class(model) -> bool:
    """Whether the model learnt the null class (label num_classes) of CFG: it was trained with label dropout."""
    return model.config.class_dropout_prob > 0


def class_information(model, codes: np.ndarray, labels: np.ndarray, batch_size: int, orders: int = 1,
                      seed: int = 0, nll: np.ndarray | None = None) -> np.ndarray:
    """Per image, NLL(null class) − NLL(true class) in nats per token: how much the label tells the model about
    the image, −log p(x|∅) + log p(x|y). Averaged over images and times the tokens per image it estimates the mutual
    information I(x; y) the model uses, at most log(classes) per image when p(x|∅) is the mixture of the class
    branches (an undertrained null branch overshoots). Paired (same images, same ARPG orders), so its standard error
    is far smaller than either NLL's. `nll`: the true-class scores, when already made."""
    check_heldout(model, codes, labels)
    if not has_null_class(model):
        raise UserError("the model has no null class (trained with class_dropout 0): its class information "
                        "cannot be measured")
    true = _score(model, codes, labels, batch_size, orders, seed) if nll is None else nll
    null = np.full_like(labels, model.config.num_classes)
    return _score(model, codes, null, batch_size, orders, seed) - true


def _score(model, codes: np.ndarray, labels: np.ndarray, batch_size: int, orders: int, seed: int) -> np.ndarray:
    """`heldout_nll` without the checks: `labels` may hold the null class (num_classes)."""
    import torch
    import torch.nn.functional as F

    out = []
    model.eval()
    device = next(model.parameters()).device  # the batches go where the model is (`run_nll` places it)
    with torch.no_grad():
        for i in range(0, len(codes), batch_size):
            z = model.order.to_order(torch.as_tensor(codes[i:i + batch_size].astype(np.int64))).to(device)
            y = torch.as_tensor(labels[i:i + batch_size].astype(np.int64)).to(device)
            if model.config.order != "arpg":
                logits = model(z, y)
                nll = F.cross_entropy(logits[:, :model.num_tokens].float().flatten(0, 1), z.flatten(), reduction="none")
                out.append(nll.view(len(z), -1).mean(1).cpu().numpy())
                continue
            per_order = []
            perms = torch.stack([random_orders(seed, j, orders, z.shape[1]) for j in range(i, i + len(z))], 1).to(device)
            for perm in perms:
                logits = model(z, y, orders=perm, drop_labels=False)
                target = z.gather(1, perm)
                per_order.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                                 .view(len(z), -1).mean(1))
            out.append(torch.stack(per_order).mean(0).cpu().numpy())
    return np.concatenate(out)


def heldout_draw(tokens: str, images: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codes, labels) of the centre crop of `images` held-out images (0 = all): a fixed random draw from `seed`,
    since the shards are sorted by class. A smaller draw with the same seed is a subset of a larger one (the same
    permutation's head), so the learning curve's images are among those `par nll` scores."""
    from par.data.shards import TokenShards

    shards = TokenShards(tokens)
    if shards.centre_crop is None:
        raise UserError(f"{tokens}: its crop order {shards.crop_order} has no centre crop to score")
    codes, labels = shards.load(crop=shards.centre_crop)
    if images and images < len(codes):
        pick = np.sort(np.random.default_rng(seed).permutation(len(codes))[:images])
        codes, labels = codes[pick], labels[pick]
    return codes, labels


def mean_se(per_image: np.ndarray) -> tuple[float, float]:
    """Mean over images and its standard error."""
    return float(per_image.mean()), float(per_image.std(ddof=1) / math.sqrt(len(per_image)))


def class_information_record(model, codes, labels, settings: NLLSettings, nll: np.ndarray) -> dict:
    """`par nll`'s class-information fields: NLL(null) − NLL(true) per token and per image ± SE, beside its ceiling
    log(classes); a model without a null class gets the reason instead."""
    if not has_null_class(model):
        return {"class_info_unavailable": "no null class (trained with class_dropout 0)"}
    orders = settings.arpg_orders if model.config.order == "arpg" else 1
    info, info_se = mean_se(class_information(model, codes, labels, settings.batch_size, orders, settings.seed, nll))
    tokens = codes.shape[1]
    return {"nll_null": info + float(nll.mean()), "class_info": info, "class_info_se": info_se,
            "class_info_per_image": info * tokens, "class_info_per_image_se": info_se * tokens,
            "class_info_max_per_image": math.log(model.config.num_classes)}


def run_nll(model_path: str, tokens: str, out: str, settings: NLLSettings, weights: str = "model") -> dict:
    from par.core.model import load_checkpoint

    codes, labels = heldout_draw(tokens, settings.images, settings.seed)
    from par.devices import resolve

    device = resolve(settings.device)
    if device.type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
    model = load_checkpoint(model_path, weights=weights).to(device)
    t0 = time.perf_counter()
    arpg = model.config.order == "arpg"
    per_image = heldout_nll(model, codes, labels, settings.batch_size, settings.arpg_orders if arpg else 1,
                            settings.seed)
    nll, nll_se = mean_se(per_image)
    record = {"nll": nll, "nll_se": nll_se, "bits_per_token": float(per_image.mean() / math.log(2)),
              "n_images": len(per_image),
              "tokens_per_image": int(codes.shape[1]), "split": "test", "crop": "center", "tokens": str(tokens),
              "model": str(model_path), "weights": weights, "order": model.order.name, "n": model.config.n,
              "kind": "random-order upper bound" if arpg else "exact",
              **({"orders_per_image": settings.arpg_orders} if arpg else {}),
              **class_information_record(model, codes, labels, settings, per_image),
              "seconds": time.perf_counter() - t0, "device": str(device)}
    write_json(out, record)
    return record


def cmd_nll(args) -> int:
    r = run_nll(args.model, args.tokens, args.out, from_args(NLLSettings, args), args.weights)
    print(f"{args.out}: NLL {r['nll']:.4f} ± {r['nll_se']:.4f} nats/token over {r['n_images']} held-out images")
    if "class_info" in r:
        print(f"{args.out}: class information {r['class_info_per_image']:.3f} ± {r['class_info_per_image_se']:.3f} "
              f"nats/image of at most {r['class_info_max_per_image']:.3f} (log classes)")
    return 0


def register(sub):
    p = sub.add_parser("nll", help="held-out NLL per token (teacher forcing; exact for any order and n, an "
                       "upper bound for ARPG)")
    p.add_argument("--model", required=True, help="checkpoint written by `par train`")
    p.add_argument("--tokens", required=True, help="`par tokenize` folder of the held-out split")
    p.add_argument("--out", required=True, help="result JSON (written atomically)")
    p.add_argument("--weights", default="model", choices=("model", "ema"), help="which weights to score")
    add_arguments(p, NLLSettings)
    p.set_defaults(func=cmd_nll)
