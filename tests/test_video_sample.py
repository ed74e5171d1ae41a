"""`par sample` with a video tokenizer: clips, filmstrip, GIF, MP4, sampling.json; and `par make-video-floor`."""

import argparse
import json

import numpy as np
import pytest
import torch

from par.cli import main
from par.errors import UserError

TINY_VQ = dict(bits=8, ch=8, ch_mult=(1, 2, 2), temporal_downsample=(True, True), res_blocks=1)  # 9×16×16 ↔ 3×4×4
CLASSES = 5


@pytest.fixture(scope="module")
def tiny_video_models(tmp_path_factory):
    from par import io
    from par.core.model import Transformer, model_config
    from par.data.tokenizer import VQConfig, VQModel, save_vq
    from par.data.video_tokenizer import VideoTokenizer, VideoVQConfig, save_video_vq

    root = tmp_path_factory.mktemp("video-models")
    torch.manual_seed(0)
    save_video_vq(VideoTokenizer(VideoVQConfig(**TINY_VQ)), root / "video_vq.pt")
    gpt = Transformer(model_config("tiny-S", grid=(3, 4, 4), order="par", n=4, vocab_size=256, num_classes=CLASSES))
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    io.torch_save({"model": gpt.state_dict(), "config": gpt.config.to_dict()}, root / "gpt.pt")
    save_vq(VQModel(VQConfig(ch=32, encoder_ch_mult=(1, 1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 1, 2), z_channels=32,
                             codebook_size=64, codebook_embed_dim=8)), root / "image_vq.pt")
    return root


def _args(models, out, vq="video_vq.pt", *extra):
    return ["sample", "--model", str(models / "gpt.pt"), "--vq", str(models / vq), "--out", str(out),
            "--num-samples", "6", "--shard-size", "4", "--batch-size", "4", "--image-size", "32", *extra]


def test_video_sampling_writes_clips_grids_and_meta(tiny_video_models, tmp_path):
    from PIL import Image

    from par.eval.sample import GIF_MS_PER_FRAME, VIDEO_PER_CLASS, load_tokenizer

    out = tmp_path / "s"
    assert main(_args(tiny_video_models, out)) == 0
    with np.load(out / "samples.npz") as z:
        assert sorted(z.files) == ["clips", "labels"]
        clips, labels = z["clips"], z["labels"]
    assert clips.dtype == np.uint8 and clips.shape == (6, 9, 16, 16, 3)  # native size: --image-size 32 ignored
    assert labels.dtype == np.int64 and np.array_equal(labels, np.load(out / "labels.npy"))
    assert labels.min() >= 0 and labels.max() < CLASSES
    assert clips.std() > 0  # decoded, not blank
    # the shards hold clips, and they are the clips of the npz, in order
    np.testing.assert_array_equal(np.load(out / "shards" / "samples-00001.npz")["clips"], clips[4:])

    assert Image.open(out / "grid.png").size == (9 * 16, CLASSES * 16)  # filmstrip: frames × classes
    gif = Image.open(out / "grid.gif")
    assert gif.size == (VIDEO_PER_CLASS * 16, CLASSES * 16) and gif.info["loop"] == 0
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert abs(sum(durations) - 9 * GIF_MS_PER_FRAME) <= 5  # 8 fps (delays are whole centiseconds)
    assert gif.n_frames == 9
    assert (out / "grid.mp4").stat().st_size > 0
    import av

    with av.open(str(out / "grid.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (CLASSES * 16, VIDEO_PER_CLASS * 16, 3)

    meta = json.loads((out / "sampling.json").read_text())
    assert meta["modality"] == "video" and meta["clip_shape"] == [9, 16, 16, 3]
    assert meta["grid_gif"].endswith("grid.gif") and meta["grid_mp4"].endswith("grid.mp4")
    assert meta["grid_mp4_codec"] in ("h264", "mpeg4")
    assert meta["forward_calls"] == 4 + 44 // 4  # 48 tokens: 4 sequential, then 11 groups of 4
    assert meta["seconds_per_image_batch1"] > 0 and meta["images_per_second"] > 0
    assert load_tokenizer(tiny_video_models / "video_vq.pt")[1] is True
    assert load_tokenizer(tiny_video_models / "image_vq.pt")[1] is False


def test_video_shards_do_not_depend_on_who_made_them(tiny_video_models, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(tiny_video_models, full)) == 0
    assert main(_args(tiny_video_models, part, "video_vq.pt", "--shard", "1", "--num-shards", "2")) == 0
    assert main(_args(tiny_video_models, part, "video_vq.pt", "--finalize")) == 0
    np.testing.assert_array_equal(np.load(full / "samples.npz")["clips"], np.load(part / "samples.npz")["clips"])


def test_tokenizer_and_model_must_agree_on_the_modality(tiny_video_models, tmp_path, capsys):
    assert main(_args(tiny_video_models, tmp_path / "a", "image_vq.pt")) == 2
    assert "an image tokenizer, but --model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_decode_clips_is_the_tokenizer_reconstruction_path(tiny_video_models):
    from par.data.video_tokenizer import load_video_vq, tensor_to_clips
    from par.eval.sample import decode_clips

    tok = load_video_vq(tiny_video_models / "video_vq.pt")
    ids = torch.randint(0, 256, (2, 3, 4, 4))
    with torch.no_grad():
        ref = tensor_to_clips(tok.decode_codes(ids))
    np.testing.assert_array_equal(decode_clips(tok, ids.reshape(2, -1), (3, 4, 4)), ref)


def test_odd_sized_mp4_is_padded(tmp_path):
    from par.eval.sample import write_mp4

    frames = [np.full((7, 9, 3), 40 * t, np.uint8) for t in range(5)]
    assert write_mp4(tmp_path / "x.mp4", frames, fps=8) in ("h264", "mpeg4")
    import av

    with av.open(str(tmp_path / "x.mp4")) as c:
        assert [f.to_ndarray(format="rgb24").shape for f in c.decode(video=0)] == [(8, 10, 3)] * 5


# ------------------------------------------------------------------------------------------- make-video-floor


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A prepare-video folder of 10 moving-squares clips (9 frames, 16×16), 3 shards."""
    from par.data.clips import prepare_clips
    from par.data.video_tokenizer import moving_squares

    class Source:
        name = "squares"
        class_names = ["a", "b", "c"]
        items = [(f"v{i}", i % 3) for i in range(10)]
        data = moving_squares(10, 9, 16, seed=3)

        def settings(self):
            return {"frames": 9, "fps": 8.0, "size": 16}

        def clip(self, i):
            return self.data[i]

    out = tmp_path_factory.mktemp("clips") / "test"
    prepare_clips(Source(), out, shard_size=4, progress=False)
    return out, Source.data, np.array([y for _, y in Source.items])


def _floor(*argv):
    from par.eval import video_floor

    parser = argparse.ArgumentParser(prog="par")
    video_floor.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["make-video-floor", *argv])
    return args.func(args)


def test_real_floor_is_the_selected_clips(clip_folder, tmp_path):
    from par.eval.fvd import draw

    folder, data, labels = clip_folder
    assert _floor("--clips", str(folder), "--max-clips", "4", "--offset", "3", "--seed", "7",
                  "--out", str(tmp_path / "real.npz")) == 0
    idx = np.sort(draw(10, 4, seed=7, offset=3))
    assert len(set(idx)) == 4 and not set(idx) & set(draw(10, 3, seed=7))  # disjoint from the first 3 of the draw
    with np.load(tmp_path / "real.npz") as z:
        assert sorted(z.files) == ["clips", "labels"]
        np.testing.assert_array_equal(z["clips"], data[idx])
        np.testing.assert_array_equal(z["labels"], labels[idx])
    # --max-clips 0: everything from the offset on
    assert _floor("--clips", str(folder), "--offset", "6", "--out", str(tmp_path / "rest.npz")) == 0
    assert len(np.load(tmp_path / "rest.npz")["clips"]) == 4


def test_recon_floor_goes_through_the_tokens(clip_folder, tmp_path):
    from par.data.video_tokenizer import VideoTokenizer, VideoVQConfig, save_video_vq, tensor_to_clips

    folder, data, _ = clip_folder
    torch.manual_seed(0)
    tok = VideoTokenizer(VideoVQConfig(**TINY_VQ)).eval()
    save_video_vq(tok, tmp_path / "vq.pt")
    assert _floor("--clips", str(folder), "--max-clips", "3", "--tokenizer", str(tmp_path / "vq.pt"),
                  "--batch-size", "2", "--out", str(tmp_path / "recon.npz")) == 0
    from par.eval.fvd import draw

    idx = np.sort(draw(10, 3, seed=0))
    with np.load(tmp_path / "recon.npz") as z:
        recon = z["clips"]
    assert recon.shape == (3, 9, 16, 16, 3) and recon.dtype == np.uint8
    with torch.no_grad():
        expected = tensor_to_clips(tok.decode_codes(tok.encode(data[idx])))
    np.testing.assert_array_equal(recon, expected)


def test_recon_floor_refuses_a_clip_length_the_tokenizer_cannot_code(clip_folder, tmp_path):
    from par.data.video_tokenizer import VideoTokenizer, VideoVQConfig, save_video_vq

    folder = clip_folder[0]
    # four temporal halvings: 1 + 16k frames; the folder's clips have 9
    cfg = VideoVQConfig(bits=4, ch=4, ch_mult=(1,) * 5, temporal_downsample=(True,) * 4, res_blocks=1)
    save_video_vq(VideoTokenizer(cfg), tmp_path / "vq16.pt")
    with pytest.raises(UserError, match=r"--tokenizer .*vq16\.pt.*9 frames.*1 \+ k·16"):
        _floor("--clips", str(folder), "--tokenizer", str(tmp_path / "vq16.pt"), "--out", str(tmp_path / "x.npz"))
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(UserError, match="--offset 10"):
        _floor("--clips", str(folder), "--offset", "10", "--out", str(tmp_path / "x.npz"))
