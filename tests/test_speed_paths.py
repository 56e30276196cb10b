"""The engine's fast paths (issue 19): fused Adam, the equalized layers' cheaper scaling, one
foreach EMA update, and the strided stem that small one-channel images get by default; each is the
same computation as the slow path it replaced, and old runs keep loading with their own nets."""
from __future__ import annotations

import json

import pytest
import torch

from calae.config import TrainConfig
from calae.data.base import DataInfo
from calae.nets.conv import ConvDecoder, ConvEncoder, resolve_stem
from calae.nets.layers import EqConv2d, EqLinear
from calae.registry import METHODS, load_all
from calae.training import Trainer, load_snapshot
from calae.training.loop import build_optimizers

from conftest import tiny_model_cfg

load_all()


def _trainer(tmp_path, model=None, method="vae", kimg=0.064, **train):
    cfg = TrainConfig(method=method, data="digits", resolution=16, kimg=kimg, batch_size=16, log_every_kimg=0.032,
                      sample_every_kimg=100, snapshot_every_kimg=0.032, precision="fp32", **train)
    return Trainer(cfg, model if model is not None else tiny_model_cfg(method), tmp_path, progress=False)


def test_optimizers_are_fused_adam_and_match_the_loop_implementation():
    m = METHODS["vae"](METHODS["vae"].Config(**tiny_model_cfg("vae")), DataInfo("image", resolution=16, channels=1))
    opts = build_optimizers(m, m.optimizers())
    assert opts and all(o.defaults["fused"] for o in opts.values())
    # one step of fused Adam equals the per-tensor loop's up to float rounding
    ps = [torch.nn.Parameter(torch.randn(64, 32)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    fused = torch.optim.Adam(ps, lr=1e-2, betas=(0.0, 0.99), fused=True)
    loop = torch.optim.Adam(qs, lr=1e-2, betas=(0.0, 0.99), foreach=False)
    for _ in range(3):
        fused.step()
        loop.step()
    for p, q in zip(ps, qs):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 512])  # input-scaled (batch < weight) and weight-scaled paths
def test_equalized_layers_scale_input_or_weight_with_the_same_result(batch):
    torch.manual_seed(0)
    lin = EqLinear(64, 48, lrmul=0.1)
    x = torch.randn(batch, 64, requires_grad=True)
    y = lin(x)
    ref = torch.nn.functional.linear(x, lin.effective_weight(), lin.effective_bias())
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    g, = torch.autograd.grad(y.square().sum(), lin.weight)
    gr, = torch.autograd.grad(ref.square().sum(), lin.weight)
    assert torch.allclose(g, gr, atol=1e-4, rtol=1e-4)
    conv = EqConv2d(8, 16, 3)
    xc = torch.randn(batch // 2 or 1, 8, 4, 4)
    ref = torch.nn.functional.conv2d(xc, conv.effective_weight(), conv.bias, padding=1)
    assert torch.allclose(conv(xc), ref, atol=1e-5, rtol=1e-5)


def test_ema_update_is_the_per_parameter_lerp(tmp_path):
    tr = _trainer(tmp_path / "r", method="alae")
    m = tr.method
    assert len(m.ema)
    before = {n: [p.detach().clone() for p in e.parameters()] for n, e in m.ema.items()}
    for n in m.ema:
        for p in m.nets[n].parameters():
            p.data.add_(1.0)
    hl = m.ema_halflife_kimg()
    beta = 0.5 ** (tr.images_per_step / (hl * 1000.0))
    tr._update_ema()
    for n, e in m.ema.items():
        for pe, p0, p in zip(e.parameters(), before[n], m.nets[n].parameters()):
            assert torch.allclose(pe, p0 + (p.detach() - p0) * (1 - beta), atol=1e-6)


def test_stem_auto_is_strided_for_small_gray_images_only():
    assert resolve_stem("auto", 1, 28) == "strided" and resolve_stem("auto", 1, 16) == "strided"
    assert resolve_stem("auto", 3, 32) == "full" and resolve_stem("auto", 1, 64) == "full"
    assert resolve_stem("auto", 1, 27) == "full" and resolve_stem("full", 1, 28) == "full"
    x = torch.randn(3, 1, 28, 28)
    for stem in ("full", "strided"):
        E, G = ConvEncoder(1, 28, 10, 16, 64, "group", stem), ConvDecoder(1, 28, 5, 16, 64, "group", stem)
        assert E(x).shape == (3, 10) and G(torch.randn(3, 5)).shape == (3, 1, 28, 28)
    full = sum(p.numel() for p in ConvEncoder(1, 28, 10, 32, 256, "group", "full").parameters())
    strided = sum(p.numel() for p in ConvEncoder(1, 28, 10, 32, 256, "group", "strided").parameters())
    assert strided < full / 2  # one level fewer
    with pytest.raises(ValueError, match="divisible by 2; got 27 px"):
        ConvEncoder(1, 27, 10, stem="strided")


def test_stem_strided4_halves_twice_before_the_levels():
    """strided4 (the CPU preset for 256 px): two 4x4 stride-2 convs in, two transposed convs out;
    the residual levels start at R/4, so the nets are one level shorter than strided's."""
    x = torch.randn(2, 3, 32, 32)
    E, G = ConvEncoder(3, 32, 10, 16, 64, "group", "strided4"), ConvDecoder(3, 32, 6, 16, 64, "group", "strided4")
    assert E(x).shape == (2, 10) and G(torch.randn(2, 6)).shape == (2, 3, 32, 32)
    convs = [m for m in E.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)] and convs[0].out_channels == 8
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in G.out) == 2
    E2 = ConvEncoder(3, 32, 10, 16, 64, "group", "strided")
    assert len(E.blocks) < len(E2.blocks)  # one level fewer
    x.requires_grad_(True)
    E(x).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 4; got 30 px"):
        ConvDecoder(3, 30, 6, stem="strided4")
    with pytest.raises(ValueError, match="stem must be one of full, strided, strided4"):
        ConvEncoder(3, 32, 6, stem="strided8")


def test_config_json_records_the_resolved_stem(tmp_path):
    tr = _trainer(tmp_path / "r")
    tr.run()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["stem"] == "strided"  # digits: one channel, 16 px
    assert type(tr.method.nets["E"].stem[0]).__name__ == "Conv2d" and tr.method.nets["E"].stem[0].stride == (2, 2)
    full = _trainer(tmp_path / "f", {**tiny_model_cfg("vae"), "stem": "full"})
    assert full.method.nets["E"].stem[0].stride == (1, 1)


def test_a_run_from_before_the_stem_option_loads_and_resumes_with_its_full_stem(tmp_path):
    """A folder whose config.json has no ``stem`` (written before the option) holds full-stem
    nets: its snapshot loads, and the same command resumes it rather than refusing a new config."""
    out = tmp_path / "old"
    tr = _trainer(out, {**tiny_model_cfg("vae"), "stem": "full"}, kimg=0.032)
    tr.run()
    d = json.loads((out / "config.json").read_text())
    del d["model"]["stem"]
    (out / "config.json").write_text(json.dumps(d))
    # the snapshot's own metadata, as an old snapshot wrote it
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    snap = out / "snapshot.safetensors"
    with safe_open(str(snap), "pt") as f:
        meta = f.metadata()
    head = json.loads(meta["calae"])
    del head["model"]["stem"]
    save_file(load_file(str(snap)), str(snap), metadata={**meta, "calae": json.dumps(head)})
    m = load_snapshot(out)
    assert m.nets["E"].stem[0].stride == (1, 1)
    resumed = _trainer(out, kimg=0.064)  # the same command, stem left at auto
    assert resumed.model_cfg.stem == "full"
    assert resumed.run()["steps"] == resumed.total_steps


def test_loaded_moments_take_their_parameters_layout():
    """Fused Adam walks parameter, gradient and moments as flat arrays: moments loaded contiguous
    for a channels_last parameter would pair the wrong elements (the step then differs by ~0.17
    here); load_state gives them the parameter's layout, so the step equals the per-tensor loop's."""
    from calae.training.checkpoint import _match_param_layouts

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last))
    q = torch.nn.Parameter(p.detach().clone())
    g = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    for param, fused in ((p, True), (q, False)):
        o = torch.optim.Adam([param], lr=0.1, fused=fused)
        param.grad = g.clone()
        o.step()
        sd = o.state_dict()
        sd["state"][0] = {k: (v.contiguous() if v.dim() else v) for k, v in sd["state"][0].items()}
        o.load_state_dict(sd)
        _match_param_layouts(o)
        assert o.state[param]["exp_avg"].stride() == param.stride()
        param.grad = g.clone()
        o.step()
    assert torch.allclose(p, q, atol=1e-6)
