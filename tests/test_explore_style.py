"""The explorer's server logic without a browser: a style model's per-layer style ranges and
truncation ψ, the map coloured by the fractal parameters, and one model shared by concurrent
requests with and without bends (each answer the same as when asked alone)."""
import base64
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import calae.api as ca
from calae.config import TrainConfig
from calae.data import open_dataset
from calae.training import Trainer
from calae.web.server import Explorer, RequestError

from conftest import tiny_model_cfg


def train(method, out):
    cfg = TrainConfig(method=method, data="fractals", resolution=16, kimg=0.032, batch_size=16, precision="fp32",
                      sample_every_kimg=100, snapshot_every_kimg=100, n_data=64)
    Trainer(cfg, tiny_model_cfg(method), out, progress=False, pictures=False).run()
    return ca.load(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore_style")
    return {m: train(m, root / m) for m in ("alae", "vae")}


@pytest.fixture(scope="module")
def fractals():
    return open_dataset("fractals", resolution=16, channels=3, n=64)


def pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def test_a_style_model_offers_per_layer_styles_and_truncation(models):
    m = models["alae"]
    ex = Explorer(m, None, directions=4)
    info = ex.info()
    L = info["style_layers"]
    assert L == m.style_layers > 1
    psi = next(o for o in info["options"] if o["name"] == "psi")
    assert (psi["low"], psi["high"], psi["integer"]) == (-2.0, 2.0, False)
    assert info["display_options"]["psi"] == pytest.approx(m.display_options()["psi"])

    a, b = m.sample_latents(2, seed=4)
    plain = pixels(ex.decode({"code": a.tolist(), "options": {"psi": 1.0}})["image"])
    # ψ = 0 decodes the mean w whatever the code; ψ = 1 is the code itself
    mean_a = pixels(ex.decode({"code": a.tolist(), "options": {"psi": 0.0}})["image"])
    mean_b = pixels(ex.decode({"code": b.tolist(), "options": {"psi": 0.0}})["image"])
    assert np.abs(mean_a - mean_b).max() == 0 and np.abs(plain - mean_a).max() > 0
    # styles 0..L-1 all from b: exactly b's image; styles from the code itself: the plain image
    only_b = pixels(ex.decode({"code": b.tolist(), "options": {"psi": 1.0}})["image"])
    all_from_b = ex.decode({"code": a.tolist(), "options": {"psi": 1.0}, "mix": {"code": b.tolist(), "lo": 0, "hi": L - 1}})
    assert np.abs(pixels(all_from_b["image"]) - only_b).max() == 0 and np.abs(only_b - plain).max() > 0
    for lo, hi in [(0, 0), (1, L - 1), (0, L - 1)]:
        same = ex.decode({"code": a.tolist(), "options": {"psi": 1.0}, "mix": {"code": a.tolist(), "lo": lo, "hi": hi}})
        assert np.abs(pixels(same["image"]) - plain).max() == 0
    # the first style alone from b changes the image (the coarsest layer; a barely trained
    # progressive G may not use its finest styles yet)
    first = pixels(ex.decode({"code": a.tolist(), "options": {"psi": 1.0},
                              "mix": {"code": b.tolist(), "lo": 0, "hi": 0}})["image"])
    assert np.abs(first - plain).max() > 0
    with pytest.raises(RequestError, match=f"0 <= lo <= hi < {L}"):
        ex.decode({"code": a.tolist(), "mix": {"code": b.tolist(), "lo": 1, "hi": L}})
    with pytest.raises(ca.APIError, match=r"psi must lie in \[-2.0, 2.0\]"):
        ex.decode({"code": a.tolist(), "options": {"psi": 5}})


def test_a_one_code_model_refuses_style_mixing(models):
    ex = Explorer(models["vae"], None, directions=4)
    assert ex.info()["style_layers"] == 1
    z = models["vae"].sample_latents(1, seed=0)[0].tolist()
    with pytest.raises(RequestError, match="style mixing needs a style generator"):
        ex.decode({"code": z, "mix": {"code": z, "lo": 0, "hi": 0}})


def test_the_map_is_coloured_by_the_fractal_parameters(models, fractals):
    ex = Explorer(models["vae"], fractals, n=40, directions=4)
    mp = ex.map("pca")
    assert len(mp["xy"]) == 40
    b = fractals.get(torch.arange(len(fractals)))
    assert set(fractals.param_names) <= set(mp["colours"])
    for name in fractals.param_names:  # each colour is that parameter of the mapped item
        assert len(mp["colours"][name]) == 40
    j = fractals.param_names.index(fractals.param_names[0])
    assert set(np.round(mp["colours"][fractals.param_names[0]], 4)) <= set(np.round(b.params[:, j].numpy(), 4))
    if "label" in mp["colours"]:
        assert mp["categories"]["label"]
    with pytest.raises(RequestError, match="projection must be one of"):
        ex.map("../etc/passwd")


def test_concurrent_requests_share_the_model_and_bends_stay_in_their_own(models):
    m = models["vae"]
    ex = Explorer(m, None, directions=4)
    layer = next(iter(ex.layers))
    codes = m.sample_latents(6, seed=1).tolist()
    reqs = [{"code": c, "bends": [{"layer": layer, "transform": "rotate:90"}] if i % 2 else []}
            for i, c in enumerate(codes)]
    alone = [pixels(ex.decode(r)["image"]) for r in reqs]
    got: dict = {}
    errors = []

    def worker(k):
        try:
            for rep in range(6):
                i = (k + rep) % len(reqs)
                got.setdefault(i, []).append(pixels(ex.decode(reqs[i])["image"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i, imgs in got.items():
        for img in imgs:
            assert np.abs(img - alone[i]).max() == 0, i
    assert all(not mod._forward_hooks for mod in m.decoder.modules())
    assert np.abs(alone[1] - pixels(ex.decode({"code": codes[1]})["image"])).max() > 0  # the bend did bend


def test_every_point_of_the_map_has_a_code():
    from calae.explore import LatentMap

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(40, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    pca = LatentMap(codes, "pca")
    assert pca.xy.shape == (40, 2)
    for u, v in [(0.0, 0.0), (3.0, -1.5), tuple(pca.xy[7])]:
        w = pca.code_at(u, v)  # PCA goes back exactly within its plane: mapping the code returns (u, v)
        assert np.allclose((w - pca.mean) @ pca.axes.T, [u, v])
    assert np.allclose(pca.code_at(0, 0), codes.mean(0))
    pytest.importorskip("sklearn")
    ts = LatentMap(codes, "tsne", seed=0)
    i, j = 3, int(np.argsort(np.hypot(*(ts.xy - ts.xy[3]).T))[1])  # an item and its nearest neighbour
    assert np.allclose(ts.code_at(*ts.xy[i]), codes[i], atol=1e-6)  # on an item: its own code
    mid = ts.code_at(*((ts.xy[i] + ts.xy[j]) / 2))  # between two: a blend, nearer both than the rest
    d = np.linalg.norm(codes - mid, axis=1)
    assert d[i] < np.median(d) and d[j] < np.median(d)
    assert np.array_equal(LatentMap(codes, "tsne", seed=0).xy, ts.xy)  # the same map for the same seed


def test_a_map_request_decodes_the_point_it_names(models, fractals):
    ex = Explorer(models["vae"], fractals, n=30, directions=4)
    lm = ex.latent_map("pca")
    u, v = lm.xy[5]
    by_map = ex.decode({"map": {"projection": "pca", "xy": [float(u), float(v)]}})
    by_code = ex.decode({"code": lm.code_at(u, v).tolist()})
    assert np.abs(pixels(by_map["image"]) - pixels(by_code["image"])).max() == 0
    assert np.allclose(by_map["code"], lm.code_at(u, v), atol=1e-5)
    with pytest.raises(RequestError, match='map must be'):
        ex.decode({"map": {"projection": "pca", "xy": "here"}})
