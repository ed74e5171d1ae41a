"""MAGVIT-v2-style video tokenizer: causality, shapes, LFQ, a short training run, checkpoints."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from par.data.lfq import LFQ, bit_groups, codebook_entropy, per_sample_entropy
from par.data.video_tokenizer import (PRESETS, VideoTokenizer, VideoVQConfig, VideoVQTrainSettings, load_video_vq,
                                      moving_squares, save_video_vq, train_video_tokenizer)
from par.errors import UserError

# 4× spatial, 4× temporal, a few thousand parameters: fast on a shared CPU
TINY = dict(bits=8, ch=8, ch_mult=(1, 2, 2), temporal_downsample=(True, True), res_blocks=1)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
def test_encoder_is_causal_latent_j_sees_frames_up_to_4j(pad_mode):
    torch.manual_seed(0)
    m = VideoTokenizer(VideoVQConfig(**TINY, pad_mode=pad_mode)).eval()
    x = torch.randn(1, 3, 17, 8, 8)
    with torch.no_grad():
        z = m.encode_latent(x)
        assert z.shape == (1, 8, 5, 2, 2)
        for j in range(4):
            x2 = x.clone()
            x2[:, :, 4 * j + 1:] = torch.randn_like(x2[:, :, 4 * j + 1:])  # change every frame after 4j
            z2 = m.encode_latent(x2)
            torch.testing.assert_close(z2[:, :, :j + 1], z[:, :, :j + 1], rtol=0, atol=1e-5)
            assert (z2[:, :, j + 1] - z[:, :, j + 1]).abs().max() > 1e-3  # the next latent frame does see them


def test_decoder_is_causal_frames_up_to_4j_see_latents_up_to_j():
    torch.manual_seed(0)
    m = VideoTokenizer(VideoVQConfig(**TINY)).eval()
    ids = torch.randint(0, 256, (1, 5, 2, 2))
    with torch.no_grad():
        y = m.decode_codes(ids)
        for j in range(4):
            ids2 = ids.clone()
            ids2[:, j + 1:] = (ids2[:, j + 1:] + 1 + torch.randint(0, 255, ids2[:, j + 1:].shape)) % 256
            y2 = m.decode_codes(ids2)
            torch.testing.assert_close(y2[:, :, :4 * j + 1], y[:, :, :4 * j + 1], rtol=0, atol=1e-5)
            assert (y2[:, :, 4 * j + 1] - y[:, :, 4 * j + 1]).abs().max() > 1e-4


def test_17_frames_to_5x_latent_to_17_frames_paper_layout():
    cfg = VideoVQConfig(bits=16, ch=8, ch_mult=(1, 2, 2, 4), temporal_downsample=(False, True, True), res_blocks=1)
    assert (cfg.spatial_factor, cfg.temporal_factor, cfg.vocab_size) == (8, 4, 65536)
    assert cfg.latent_shape(17, 128, 128) == (5, 16, 16)  # the paper's 1280 tokens
    m = VideoTokenizer(cfg).eval()
    with torch.no_grad():
        ids = m.encode(torch.rand(2, 3, 17, 32, 32) * 2 - 1)
        assert ids.shape == (2, 5, 4, 4) and ids.dtype == torch.int64
        assert 0 <= int(ids.min()) and int(ids.max()) < 65536
        assert m.decode_codes(ids).shape == (2, 3, 17, 32, 32)
        assert m.encode(torch.zeros(1, 3, 1, 32, 32)).shape == (1, 1, 4, 4)  # a single image: one latent frame
        clips = moving_squares(1, 17, 32)  # uint8 (B, T, H, W, 3) is accepted too
        assert m.encode(clips).shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match="1 \\+ k·4"):
        m.encode(torch.zeros(1, 3, 16, 32, 32))
    assert set(PRESETS) == {"tiny", "small", "paper"} and PRESETS["paper"]["bits"] == 16


def test_lfq_ids_bits_round_trip_and_vocabulary():
    q = LFQ(16)
    assert q.vocab_size == 65536
    ids = torch.tensor([[0, 1, 2, 65535], [12345, 32768, 7, 40000]])
    lat = q.codes_to_latent(ids)
    assert lat.shape == (2, 16, 4) and set(lat.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.ids(lat), ids)
    assert torch.equal(lat[0, :, 1], torch.tensor([1.0] + [-1.0] * 15))  # id 1 = bit 0 set (LSB first)
    z = torch.randn(3, 16, 5)
    zq, got, _ = q(z)
    assert torch.equal(zq, torch.where(z > 0, 1.0, -1.0)) and torch.equal(q.codes_to_latent(got), zq)
    assert torch.equal(got, (((z > 0).long()) * (2 ** torch.arange(16))[None, :, None]).sum(1))
    with pytest.raises(ValueError):
        q.codes_to_latent(torch.tensor([65536]))


def test_lfq_straight_through_and_commitment_gradients():
    q = LFQ(6, commit_beta=0.25, entropy_weight=0.0)
    z = torch.randn(4, 6, 3, requires_grad=True)
    zq, _, losses = q(z)
    w = torch.randn_like(zq)
    (zq * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # identity gradient through the sign
    z.grad = None
    losses["commit"].backward()
    sign = torch.where(z > 0, 1.0, -1.0)
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - sign).detach() / z.numel())


def test_entropy_terms_uniform_codes_max_batch_entropy_collapse_zero():
    b = 6
    codes = torch.arange(2 ** b)
    z = LFQ(b).codes_to_latent(codes)  # (64, b): every code once, |z| = 1: confident assignments
    assert codebook_entropy(z, 0.01) == pytest.approx(b * math.log(2), rel=1e-4)  # the maximum, ln 2^b
    assert per_sample_entropy(z, 0.01) < 1e-6
    collapsed = torch.ones(64, b)
    assert codebook_entropy(collapsed, 0.01) < 1e-6
    soft = torch.zeros(8, b)  # z = 0: each assignment uniform over all codes
    assert per_sample_entropy(soft, 0.01) == pytest.approx(b * math.log(2), rel=1e-5)
    # the loss prefers the spread batch to the collapsed one
    q = LFQ(b)
    assert q(z.t()[None])[2]["entropy"] < q(collapsed.t()[None])[2]["entropy"]


def test_codebook_entropy_subgroups_bound_the_exact_one():
    torch.manual_seed(0)
    assert bit_groups(16, 10) == [(0, 8), (8, 16)] and bit_groups(18, 9) == [(0, 9), (9, 18)]
    assert bit_groups(8, 10) == [(0, 8)]
    z = torch.randn(200, 8) * 0.02 + 0.01 * torch.randn(200, 1)  # correlated bits, soft assignments
    exact = codebook_entropy(z, 0.01, exact_bits=8)
    grouped = codebook_entropy(z, 0.01, exact_bits=4)
    assert grouped >= exact - 1e-5  # subadditivity
    # confident codes whose two groups carry identical bits (perfectly correlated): the grouped value counts twice
    half = torch.randn(256, 4).sign()
    zc = torch.cat([half, half], 1)
    assert codebook_entropy(zc, 0.01, 4) == pytest.approx(2 * codebook_entropy(zc, 0.01, 8).item(), rel=1e-3)
    # 16 bits: sub-groups of 8, maximum still b · ln 2 on a batch uniform per group
    z16 = LFQ(16).codes_to_latent(torch.arange(2 ** 16)[torch.randperm(2 ** 16)[:4096]])
    assert codebook_entropy(z16, 0.01, 10) == pytest.approx(16 * math.log(2), rel=2e-2)


def test_entropy_loss_gradient_spreads_a_collapsed_batch():
    torch.manual_seed(0)
    q = LFQ(4, entropy_weight=1.0, temperature=1.0)
    z = (torch.ones(1, 4, 32) + 0.3 * torch.randn(1, 4, 32)).requires_grad_()
    opt = torch.optim.SGD([z], lr=0.5)
    start = q.entropy_terms(z)[1].item()
    for _ in range(50):
        _, _, losses = q(z)
        opt.zero_grad()
        losses["entropy"].backward()
        opt.step()
    assert q.entropy_terms(z)[1].item() > start + 0.5
    assert len(q.ids(z).unique()) > 4


def test_short_training_lowers_reconstruction_error_and_checkpoint_round_trip(tmp_path):
    clips = moving_squares(24, 9, 16, seed=0)
    s = VideoVQTrainSettings(frames=9, bits=8, ch=8, ch_mult="1,2,2", temporal_downsample="1,1", res_blocks=1,
                             steps=30, batch_size=4, lr=3e-3, heldout=6, device="cpu")
    m = train_video_tokenizer(clips, s, tmp_path / "vv")
    assert m["after"]["mse"] < 0.7 * m["before"]["mse"]
    assert m["after"]["psnr_db"] > m["before"]["psnr_db"] + 1.5
    assert m["log"][-1]["recon"] < m["log"][0]["recon"]
    assert m["grid"] == [3, 4, 4] and m["tokens_per_clip"] == 48 and m["vocab_size"] == 256
    saved = json.loads((tmp_path / "vv" / "video_vq_metrics.json").read_text())
    assert saved["heldout_clips"] == 6 and len(saved["after"]["psnr_per_frame_db"]) == 9
    v = load_video_vq(tmp_path / "vv" / "video_vq.pt")  # the config travels with the checkpoint
    assert v.cfg.bits == 8 and v.cfg.temporal_downsample == (True, True) and not v.training


def test_short_training_windows_and_metrics_on_whole_clips(tmp_path):
    """`frames` below the clips' length trains on random windows (cheaper steps); grid and PSNR are of whole
    clips, the length the tokenizer codes downstream, and a window the factor cannot code is refused."""
    clips = moving_squares(16, 9, 16, seed=0)
    s = VideoVQTrainSettings(frames=5, bits=6, ch=8, ch_mult="1,2,2", temporal_downsample="1,1", res_blocks=1,
                             steps=4, batch_size=2, lr=3e-3, heldout=4, device="cpu")
    m = train_video_tokenizer(clips, s, tmp_path / "vv")
    assert m["train_window"] == 5 and m["clip"] == [9, 16, 16] and m["grid"] == [3, 4, 4]
    assert len(m["after"]["psnr_per_frame_db"]) == 9 and len(m["before"]["psnr_per_frame_db"]) == 9
    with pytest.raises(UserError, match="video tokenizer: clip 4×16×16"):
        train_video_tokenizer(clips, dataclasses.replace(s, frames=4), tmp_path / "bad")


def test_save_load_gives_identical_codes_and_refuses_others(tmp_path):
    torch.manual_seed(1)
    m = VideoTokenizer(VideoVQConfig(**TINY, pad_mode="zeros")).eval()
    save_video_vq(m, tmp_path / "v.pt")
    v = load_video_vq(tmp_path / "v.pt")
    assert v.cfg == m.cfg
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        ids = m.encode(x)
        assert torch.equal(v.encode(x), ids)
        assert torch.equal(v.decode_codes(ids), m.decode_codes(ids))
    torch.save({"model": {}, "config": {}}, tmp_path / "img.pt")
    with pytest.raises(UserError, match="kind"):
        load_video_vq(tmp_path / "img.pt")
    with pytest.raises(UserError, match="differ|match"):
        load_video_vq(tmp_path / "v.pt", VideoVQConfig(**{**TINY, "bits": 6}))


def test_moving_squares_are_deterministic_and_move():
    a, b = moving_squares(3, 5, 16, seed=2), moving_squares(3, 5, 16, seed=2)
    assert a.shape == (3, 5, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a[:, 0], a[:, -1])


def test_cli_trains_on_a_prepare_video_folder(tmp_path):
    """`par prepare-video` (Moving Fashion-MNIST) → `par train-video-vq`: the DAG's path, a few steps."""
    import json
    from pathlib import Path

    import pytest

    from par.cli import main

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("no dataset-fashion-mnist")
    common = ["--source", "moving-mnist", "--frames", "9", "--size", "32", "--num-videos", "12", "--shard-size", "6"]
    assert main(["prepare-video", *common, "--out", str(tmp_path / "train")]) == 0
    assert main(["prepare-video", *common, "--split", "test", "--out", str(tmp_path / "test")]) == 0
    assert main(["train-video-vq", "--clips", str(tmp_path / "train"), "--test-clips", str(tmp_path / "test"),
                 "--out", str(tmp_path / "vq"), "--frames", "9", "--bits", "6", "--ch-mult", "1,2,2",
                 "--temporal-downsample", "1,1", "--steps", "3", "--batch-size", "2", "--heldout", "4"]) == 0
    m = json.loads((tmp_path / "vq" / "video_vq_metrics.json").read_text())
    assert m["grid"] == [3, 8, 8] and m["vocab_size"] == 64 and "test" in m["after"]
    assert (tmp_path / "vq" / "video_vq.pt").exists()
