"""`par make-video-floor`: the floors of Table 4 as sample sets, for `par fvd` like a model's samples.

* real floor: held-out real clips themselves — what FVD gives when the "generator" is the data;
* reconstruction floor (`--tokenizer`): the same clips through the video tokenizer (encode → decode_codes), the best
  any model over its tokens can do.

The clips are positions `--offset` … `--offset` + `--max-clips` − 1 of the seeded permutation that `par fvd-stats`
draws from (`par.eval.fvd.draw`): with the same folder and seed, an offset past the reference's clips keeps the
floor's clips disjoint from the reference. The output is a video samples.npz (`clips` uint8 N×T×H×W×3, `labels`
int64), in folder order.
"""

from __future__ import annotations

import time

import numpy as np

from par.errors import UserError


def reconstruct(tokenizer, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """uint8 clips → their reconstructions through the tokens (encode → decode_codes), `batch_size` at a time."""
    import torch

    from par.data.video_tokenizer import tensor_to_clips

    out = np.empty_like(clips)
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            ids = tokenizer.encode(clips[i:i + batch_size])
            out[i:i + batch_size] = tensor_to_clips(tokenizer.decode_codes(ids))
    return out


def make_floor(clips_dir, out, max_clips: int = 0, offset: int = 0, seed: int = 0, tokenizer=None,
               batch_size: int = 8, device: str = "auto") -> dict:
    """Write the floor's samples.npz; returns a summary (clips, shape, kind, seconds)."""
    from par.data.clips import VideoClips
    from par.eval.fvd import Clips, draw
    from par.eval.sample import write_clips_npz

    t0 = time.perf_counter()
    source = VideoClips(clips_dir)
    if not len(source):
        raise UserError(f"--clips {clips_dir}: the folder holds no clips")
    idx = np.sort(draw(len(source), max_clips, seed, offset))  # sorted: sequential reads from the shards
    tok = None
    if tokenizer is not None:  # load and check the tokenizer before reading any clip
        import torch

        from par.data.video_tokenizer import load_video_vq

        tok = load_video_vq(tokenizer)
        try:
            tok.cfg.latent_shape(*source.shape[:3])
        except ValueError as e:
            raise UserError(f"--tokenizer {tokenizer}: cannot code the clips of --clips {clips_dir} "
                            f"({source.shape[0]} frames of {source.shape[1]}×{source.shape[2]}): {e}; prepare clips "
                            "of a length and size it codes") from None
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: must be at least 1")
        from par.devices import resolve

        tok = tok.to(resolve(device))
    clips = np.asarray(Clips(source, idx, name=f"--clips {clips_dir}"))
    if tok is not None:
        clips = reconstruct(tok, clips, batch_size)
    write_clips_npz(out, clips, source.labels[idx])
    return {"clips": len(idx), "shape": list(clips.shape[1:]), "kind": "recon" if tok is not None else "real",
            "seconds": time.perf_counter() - t0}


def cmd_make_video_floor(args) -> int:
    s = make_floor(args.clips, args.out, args.max_clips, args.offset, args.seed, args.tokenizer, args.batch_size,
                   args.device)
    print(f"{args.out}: {s['kind']} floor, {s['clips']} clips of {'×'.join(map(str, s['shape']))} "
          f"({s['seconds']:.1f} s)")
    return 0


def register(sub):
    p = sub.add_parser("make-video-floor", help="Table 4 floors: held-out real clips or their tokenizer "
                       "reconstructions, as a video samples.npz", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", required=True, help="a `par prepare-video` folder (the held-out split)")
    p.add_argument("--out", required=True, help="samples.npz (clips, labels), written atomically")
    p.add_argument("--max-clips", type=int, default=0, help="clips taken from the draw; 0 = to its end (default)")
    p.add_argument("--offset", type=int, default=0,
                   help="first position in the seeded permutation (past `par fvd-stats --max-clips` on the same "
                        "folder and seed: disjoint from that reference); default 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation (default 0)")
    p.add_argument("--tokenizer", help="video tokenizer checkpoint (`par train-video-vq`): write its reconstructions "
                   "(the clip length must be 1 + k·temporal factor)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per tokenizer batch (default 8)")
    p.add_argument("--device", default="auto", help="tokenizer device: auto (cuda if available), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_make_video_floor)
