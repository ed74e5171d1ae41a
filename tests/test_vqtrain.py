"""Tokenizer training for the tiny preset: dead-code restart, and a short run that improves reconstruction."""

import json

import torch

from par.data.tinyset import make_tinyset
from par.data.tokenizer import VQConfig, VQModel, load_vq
from par.config import VQTrainJob as VQTrainConfig
from par.data.vqtrain import restart_dead_codes, train_vq


def test_restart_dead_codes_revives_unused_codes():
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=32, ch=32, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2), z_channels=32,
                          enc_res_blocks=1, dec_res_blocks=1))
    vq.quantize.codebook_used.zero_()  # the log says: only code 0 was used recently
    before = vq.quantize.embedding.weight.detach().clone()
    n = restart_dead_codes(vq, torch.randn(2, 3, 16, 16), window=100, gen=torch.Generator().manual_seed(0))
    after = vq.quantize.embedding.weight.detach()
    assert n == 31
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1:], before[1:])
    torch.testing.assert_close(after.norm(dim=-1), torch.ones(32))  # restarted rows are L2-normalised latents


def test_short_training_improves_reconstruction(tmp_path):
    torch.set_num_threads(1)
    make_tinyset(tmp_path / "imgs", images_per_class=12, size=32, seed=0)
    cfg = VQTrainConfig(images=str(tmp_path / "imgs"), out=str(tmp_path / "vq"), image_size=24, train_crop=16,
                        ch=32, ch_mult="1,2", z_channels=32, codebook_size=64, steps=40, batch_size=8, lr=3e-3,
                        heldout=16, restart_every=5)
    m = train_vq(cfg)
    assert m["after"]["mse"] < m["before"]["mse"]
    assert m["after"]["codebook_usage"] > 0.2
    assert m["grid"] == [12, 12]
    vq = load_vq(tmp_path / "vq" / "vq.pt")  # config travels with the checkpoint
    assert vq.cfg.codebook_size == 64
    assert json.loads((tmp_path / "vq" / "vq_metrics.json").read_text())["heldout_images"] == 16
