import argparse
import json
import pathlib

import pytest
import torch

from par.errors import UserError
from par.data.tokenizer import VQConfig, VQModel, golden_checks, load_vq, save_vq

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"
VQ_TINY = GOLDEN / "vq_tiny"


@pytest.fixture(autouse=True)
def one_thread():
    # 2-core CI shared with other jobs: multi-threaded CPU convs oversubscribe and slow down ~7x
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config():
    return VQConfig.from_golden_config(json.loads((VQ_TINY / "config.json").read_text()))


class Opaque:  # an arbitrary pickled class: must be refused, never loaded with weights_only=False
    pass


def small_config(**kw):
    # 2x downsample, 32 channels (GroupNorm needs multiples of 32): fast on 2 CPU cores
    return VQConfig(codebook_size=64, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2),
                    z_channels=32, ch=32, **kw)


def test_tiny_golden_strict_load_and_checks():
    sd = torch.load(VQ_TINY / "model.pt", weights_only=True)["model"]
    model = VQModel(tiny_config())
    model.load_state_dict(sd, strict=True)
    assert list(model.state_dict()) == list(sd)
    results = golden_checks(VQ_TINY)
    names = [name for name, _, _ in results]
    for want in ("encoder_out", "latents", "codes", "quant", "quant_from_codes", "codebook_l2",
                 "distances", "decoded", "reconstruction"):
        assert want in names
    failed = [r for r in results if not r[1]]
    assert not failed, failed


def test_full_size_state_dict_matches_manifest():
    manifest = json.loads((GOLDEN / "keys" / "VQ-16_vq_ds16_c2i.json").read_text())
    with torch.device("meta"):
        model = VQModel(VQConfig())
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(manifest.items())  # keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == 71_883_403


def test_encode_decode_shapes():
    model = VQModel(tiny_config()).eval()
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    with torch.no_grad():
        quant, codes = model.encode(x)
        assert quant.shape == (2, 8, 4, 2) and codes.shape == (2, 8) and codes.dtype == torch.int64
        assert model.decode_codes(codes, grid=(4, 2)).shape == x.shape


def test_load_vq_missing_key(tmp_path):
    sd = torch.load(VQ_TINY / "model.pt", weights_only=True)["model"]
    del sd["quant_conv.bias"]
    path = tmp_path / "broken.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(UserError, match="broken.pt") as e:
        load_vq(path, tiny_config())
    assert "quant_conv.bias" in str(e.value) and "\n" not in str(e.value)


def test_load_vq_wrong_config_and_unreadable(tmp_path):
    with pytest.raises(UserError, match="model.pt"):
        load_vq(VQ_TINY / "model.pt", small_config())  # shape mismatch
    with pytest.raises(UserError, match="nope.pt"):
        load_vq(tmp_path / "nope.pt")

    torch.save({"model": {}, "extra": Opaque()}, tmp_path / "opaque.pt")
    with pytest.raises(UserError, match="weights_only"):
        load_vq(tmp_path / "opaque.pt")


@pytest.mark.parametrize("wrap", ["model", "module", None])
def test_load_vq_formats_and_args_namespace(tmp_path, wrap):
    sd = torch.load(VQ_TINY / "model.pt", weights_only=True)["model"]
    # LlamaGen training checkpoints carry a pickled argparse.Namespace next to the weights
    ckpt = {wrap: sd, "args": argparse.Namespace(vq_model="VQ-16", lr=1e-4)} if wrap else sd
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model = load_vq(tmp_path / "ckpt.pt", tiny_config())
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQModel(small_config(commit_loss_beta=0.5))
    model.quantize.codebook_used[-3:] = torch.tensor([1.0, 2.0, 3.0])
    save_vq(model, tmp_path / "vq.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vq.pt", "vq.pt.sha256"]  # no temp file left behind
    loaded = load_vq(tmp_path / "vq.pt")  # config read from the file
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def smooth_images(n, size, gen):
    # low-frequency random images in [-1, 1]: upsampled 4x4 noise
    low = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = VQModel(small_config(entropy_loss_ratio=0.1)).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = smooth_images(4, 16, gen)  # 8x8 latent grid
    recon_losses = []
    for _ in range(30):
        _, losses = model(data)
        assert set(losses) == {"recon", "codebook", "commit", "entropy", "loss"}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        recon_losses.append(losses["recon"].item())
    first, last = sum(recon_losses[:3]) / 3, sum(recon_losses[-3:]) / 3
    assert last < 0.5 * first, recon_losses
    assert model.quantize.embedding.weight.grad is not None  # codebook loss reaches the codebook
    with torch.no_grad():
        _, codes = model.encode(data)  # training mode: appends this batch's codes to the usage log
    assert torch.equal(model.quantize.codebook_used[-codes.numel():].long(), codes.flatten())
    assert 0 < model.codebook_usage() <= 1
