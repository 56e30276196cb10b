"""calae.api: one inference surface for every method, on uint8 images, thread-safe."""
import threading

import pytest
import torch

import calae.api as ca
from calae.config import TrainConfig
from calae.registry import METHODS, load_all
from calae.training import Trainer

from conftest import tiny_model_cfg

load_all()
ALL = sorted(METHODS)


def run(method, out, model=None, data="digits"):
    cfg = TrainConfig(method=method, data=data, resolution=16 if data == "digits" else None, kimg=0.032,
                      batch_size=16, precision="fp32", sample_every_kimg=100, snapshot_every_kimg=100)
    Trainer(cfg, {**tiny_model_cfg(method), **(model or {})}, out, progress=False, pictures=False).run()
    return ca.load(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    extra = {"alae": {"w_dim": 6}}  # w and z differ: decode must never be handed a z
    return {m: run(m, root / m, extra.get(m)) for m in ALL}


@pytest.mark.parametrize("method", ALL)
def test_surface_on_uint8_images(models, method):
    m = models[method]
    x = (torch.arange(5 * 16 * 16) % 256).to(torch.uint8).view(5, 1, 16, 16)
    if not m.method.has_encoder:  # a GAN decodes and samples; encode / reconstruct are one-line errors
        for call in (m.encode, m.reconstruct):
            with pytest.raises(ca.APIError, match="no encoder"):
                call(x)
        codes = m.sample_latents(5, seed=0)
    else:
        codes = m.encode(x)
    assert codes.dtype == torch.float32 and codes.shape == (5, m.latent.dim)
    imgs = m.decode(codes)
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, 1, 16, 16)
    lat = m.sample_latents(7, seed=1)
    assert lat.shape == (7, m.latent.dim) and torch.equal(lat, m.sample_latents(7, seed=1))
    assert m.decode(lat).shape == (7, 1, 16, 16)  # the latent decode takes, drawn as in training
    s = m.sample(3, seed=2)
    assert s.dtype == torch.uint8 and torch.equal(s, m.sample(3, seed=2))
    if m.method.has_encoder:
        assert m.reconstruct(x).shape == x.shape
        assert torch.equal(m.encode(x.permute(0, 2, 3, 1).numpy()), codes)  # NHWC numpy works too


def test_alae_latent_is_w_and_options_are_declared(models):
    m = models["alae"]
    assert (m.latent.name, m.latent.dim) == ("w", 6)
    assert set(m.options) == {"psi", "noise_seed"}
    w = m.sample_latents(4, seed=0)
    assert not torch.equal(m.decode(w, psi=0.5), m.decode(w))  # truncation changes the picture
    assert torch.equal(m.decode(w, noise_seed=3), m.decode(w, noise_seed=3))
    with pytest.raises(ca.APIError, match="no decode option label; its options: psi, noise_seed"):
        m.decode(w, label=1)
    with pytest.raises(ca.APIError, match=r"psi must lie in \[-2.0, 2.0\]"):
        m.decode(w, psi=5)
    with pytest.raises(ca.APIError, match="decodes 6-D w codes"):
        m.decode(torch.zeros(2, 8))  # a z where a w belongs


def test_bad_images_are_one_line_errors(models):
    m = models["vae"]
    with pytest.raises(ca.APIError, match=r"takes images of shape \[N, 1, 16, 16\].*got \[2, 3, 16, 16\]") as e:
        m.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert "\n" not in str(e.value)
    assert m.options == {}
    with pytest.raises(ca.APIError, match="vae has no decode option psi; its options: none"):
        m.sample(2, psi=0.7)


def test_supervised_aae_declares_its_label_option(tmp_path):
    m = run("aae", tmp_path / "aae", {"supervised": True})
    assert list(m.options) == ["label"]
    z = m.sample_latents(4, seed=0)
    assert not torch.equal(m.decode(z, label=1), m.decode(z, label=2))
    with pytest.raises(ca.APIError, match=r"label must lie in \[-1, 9\]"):
        m.decode(z, label=10)


def test_threads_share_one_model_without_mode_flips(models, monkeypatch):
    m = models["soft_intro_vae"]
    assert not m.method.training
    monkeypatch.setattr(type(m.method), "train", lambda self, mode=True: pytest.fail("mode flipped"))
    codes = m.sample_latents(32, seed=0)
    want = m.decode(codes)
    got, errors = [None] * 6, []

    def work(i):
        try:
            for _ in range(5):
                got[i] = m.decode(codes)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(torch.equal(g, want) for g in got)


def test_latent_scatter_compares_one_space(models, tmp_path):
    """ALAE's scatter draws E(x) = w over F(z) = w, not over z (they differ in dimension here)."""
    from calae.data import open_dataset
    from calae.viz.latents import latent_scatter

    ds = open_dataset("digits", resolution=16)
    out = latent_scatter(models["alae"], ds, tmp_path / "alae.png", n=100)
    assert out.exists() and out.stat().st_size > 1000


def test_points_models(tmp_path):
    m = run("vae", tmp_path / "toy", {"arch": "mlp"}, data="toy:8gaussians")
    pts = m.sample(10, seed=0)
    assert pts.dtype == torch.float32 and pts.shape == (10, 2)
    assert m.encode(pts).shape == (10, m.latent.dim)
    with pytest.raises(ca.APIError, match=r"takes points of shape \[N, 2\]"):
        m.encode(torch.zeros(3, 3))
