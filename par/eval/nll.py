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


def heldout_nll(model, codes: np.ndarray, labels: np.ndarray, batch_size: int, orders: int = 1,
                seed: int = 0) -> np.ndarray:
    """Per-image mean NLL (nats per token) of raster-ordered `codes` (N, h·w) with class `labels` (N,); for ARPG
    averaged over `orders` random orders per image (drawn from `seed`)."""
    import torch
    import torch.nn.functional as F

    if codes.shape[1] != model.num_tokens:
        raise UserError(f"held-out tokens have {codes.shape[1]} per image, the model {model.num_tokens}: "
                        "they come from another tokenizer or image size")
    if int(codes.max()) >= model.config.vocab_size or int(labels.max()) >= model.config.num_classes:
        raise UserError("held-out tokens or labels exceed the model's vocabulary / classes: another tokenizer or "
                        "dataset")
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(codes), batch_size):
            z = model.order.to_order(torch.as_tensor(codes[i:i + batch_size].astype(np.int64)))  # as in training
            y = torch.as_tensor(labels[i:i + batch_size].astype(np.int64))
            if model.config.order != "arpg":
                logits = model(z, y)
                nll = F.cross_entropy(logits[:, :model.num_tokens].float().flatten(0, 1), z.flatten(), reduction="none")
                out.append(nll.view(len(z), -1).mean(1).numpy())
                continue
            per_order = []
            perms = torch.stack([random_orders(seed, j, orders, z.shape[1]) for j in range(i, i + len(z))], 1)
            for perm in perms:
                logits = model(z, y, orders=perm, drop_labels=False)
                target = z.gather(1, perm)
                per_order.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                                 .view(len(z), -1).mean(1))
            out.append(torch.stack(per_order).mean(0).numpy())
    return np.concatenate(out)


def run_nll(model_path: str, tokens: str, out: str, settings: NLLSettings, weights: str = "model") -> dict:
    from par.core.model import load_checkpoint
    from par.data.shards import TokenShards

    shards = TokenShards(tokens)
    if shards.centre_crop is None:
        raise UserError(f"{tokens}: its crop order {shards.crop_order} has no centre crop to score")
    codes, labels = shards.load(crop=shards.centre_crop)
    if settings.images and settings.images < len(codes):  # a fixed random draw: the shards are sorted by class
        pick = np.sort(np.random.default_rng(settings.seed).permutation(len(codes))[:settings.images])
        codes, labels = codes[pick], labels[pick]
    model = load_checkpoint(model_path, weights=weights)
    t0 = time.perf_counter()
    arpg = model.config.order == "arpg"
    per_image = heldout_nll(model, codes, labels, settings.batch_size, settings.arpg_orders if arpg else 1,
                            settings.seed)
    record = {"nll": float(per_image.mean()), "nll_se": float(per_image.std(ddof=1) / math.sqrt(len(per_image))),
              "bits_per_token": float(per_image.mean() / math.log(2)), "n_images": len(per_image),
              "tokens_per_image": int(codes.shape[1]), "split": "test", "crop": "center", "tokens": str(tokens),
              "model": str(model_path), "weights": weights, "order": model.order.name, "n": model.config.n,
              "kind": "random-order upper bound" if arpg else "exact",
              **({"orders_per_image": settings.arpg_orders} if arpg else {}), "seconds": time.perf_counter() - t0}
    write_json(out, record)
    return record


def cmd_nll(args) -> int:
    r = run_nll(args.model, args.tokens, args.out, from_args(NLLSettings, args), args.weights)
    print(f"{args.out}: NLL {r['nll']:.4f} ± {r['nll_se']:.4f} nats/token over {r['n_images']} held-out images")
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
