"""The procedural fractal dataset: determinism, diversity, parameters, options, caches, export."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from calae.data import DataError, open_dataset
from calae.data import fractals as F
from calae.data.fractals import FAMILIES, FractalDataset, export

RES = 24


def ds(family="any", n=64, resolution=RES, **kw):
    kw.setdefault("memory_cache", False)  # every get() renders: the tests are about rendering
    return FractalDataset(family=family, n=n, resolution=resolution, **kw)


def luminance(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x[:, 0] * 0.299 + x[:, 1] * 0.587 + x[:, 2] * 0.114


# -- determinism ---------------------------------------------------------------------------------
def test_same_seed_same_bytes_across_instances_and_batchings():
    a, b = ds(seed=3), ds(seed=3)
    full = a.get(range(12))
    assert torch.equal(b.get(range(12)).x, full.x)
    shuffled = [11, 3, 0, 7, 5]
    part = b.get(shuffled)
    assert torch.equal(part.x, full.x[shuffled]) and torch.equal(part.params, full.params[shuffled])
    for i in (0, 7, 11):  # alone == within any batch
        one = b.get([i])
        assert torch.equal(one.x[0], full.x[i]) and torch.equal(one.params[0], full.params[i])
    # a different batch around the same index (other images, other groups, other chunks)
    mixed = b.get([40, 7, 63, 2])
    assert torch.equal(mixed.x[1], full.x[7]) and torch.equal(mixed.x[3], full.x[2])


def test_different_seeds_differ():
    a, b = ds(seed=0).get(range(6)), ds(seed=1).get(range(6))
    assert not torch.equal(a.params, b.params)
    assert (a.x.float() - b.x.float()).abs().mean() > 10


def test_params_reproduce_the_images_exactly():
    d = ds("any", seed=5)
    batch = d.get(range(8))
    assert torch.equal(d.render_params(batch.params), batch.x)


def test_parameters_are_a_pure_function_of_seed_and_index():
    idx = np.arange(30)
    P = F.sample_params(9, idx, 0, "any")
    P_rev = F.sample_params(9, idx[::-1], 0, "any")[::-1]
    assert np.array_equal(P, P_rev)
    assert np.array_equal(F.sample_params(9, [17], 0, "any")[0], P[17])
    assert not np.array_equal(F.sample_params(9, idx, 1, "any"), P)  # another attempt re-draws
    assert np.array_equal(P, P.astype(np.float32).astype(np.float64))  # what Batch.params carries


def test_counter_based_hash_is_stable():
    # splitmix64 of fixed keys: the same numbers on every machine and numpy version
    u = F._uniforms(F._image_keys(0, np.array([0, 1]), np.array([0, 0])), 2)
    assert u.shape == (2, 2) and ((u >= 0) & (u < 1)).all()
    assert np.array_equal(u, F._uniforms(F._image_keys(0, np.array([0, 1]), np.array([0, 0])), 2))
    keys = F._image_keys(123, np.array([5]), np.array([2]))
    assert int(keys[0]) == int(F._image_keys(123, np.array([5]), np.array([2]))[0])
    # the finaliser of splitmix64, written with Python integers
    def mix(z):
        M = (1 << 64) - 1
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    vals = np.array([1, 2**63 + 12345, 2**64 - 1], dtype=np.uint64)
    assert [int(v) for v in F._mix64(vals)] == [mix(int(v)) for v in vals]


# -- diversity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders_varied_images(family):
    batch = ds(family, seed=2, resolution=32).get(range(8))
    x = batch.x
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8
    std = luminance(x).reshape(8, -1).std(1)
    assert (std > 10).all(), std  # no near-constant images
    flat = x.float().reshape(8, -1)
    dist = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    assert dist[~torch.eye(8, dtype=torch.bool)].min() > 5  # all different from each other
    assert not F.is_dull(x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)).all()
    if family != "any":
        assert (batch.params[:, F._C["family"]] == F._FAMILY_NAMES.index(family)).all()


def test_any_draws_every_family_and_many_settings():
    P = F.sample_params(0, np.arange(400), 0, "any")
    fam = np.bincount(P[:, F._C["family"]].astype(int), minlength=4)
    assert (fam > 60).all(), fam
    assert len(np.unique(P[:, F._C["power"]])) == 4
    assert len(np.unique(P[:, F._C["color_mode"]])) == len(F.COLOR_MODES)
    assert len(np.unique(P[:, F._C["map"]])) == 4
    assert len(np.unique(P[:, F._C["iterations"]])) > 40


def test_dull_images_are_rejected():
    const = torch.full((1, 3, 32, 32), 90, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, 3, 32, 32), generator=gen, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(1, 3, 32, 32).contiguous()
    assert F.is_dull(torch.cat([const, noise, ramp])).all()


# -- parameters ----------------------------------------------------------------------------------
def test_params_shape_names_and_finiteness():
    d = ds("any", seed=4)
    batch = d.get(range(10))
    assert batch.params.shape == (10, d.info.num_params) and batch.params.dtype == torch.float32
    assert d.info.num_params == len(d.param_names) == len(F.PARAM_NAMES)
    assert torch.isfinite(batch.params).all()
    assert d.info.kind == "image" and d.info.num_classes == 0 and d.info.name == "fractals:any"
    row = F.describe_params(batch.params[0])
    assert row["family"] in F._FAMILY_NAMES and row["color_mode"] in F.COLOR_MODES
    assert set(row) == set(F.PARAM_NAMES)
    it = batch.params[:, F._C["iterations"]]
    assert (it >= 4).all() and (it <= 200).all()


# -- options -------------------------------------------------------------------------------------
def test_channels_one_is_the_luminance_of_channels_three():
    rgb = ds("any", seed=6, channels=3).get(range(6))
    grey = ds("any", seed=6, channels=1).get(range(6))
    assert grey.x.shape == (6, 1, RES, RES)
    assert torch.equal(grey.params, rgb.params)
    assert (grey.x[:, 0].float() - luminance(rgb.x)).abs().max() <= 1.0


@pytest.mark.parametrize("res", [8, 20])
def test_resolution_is_honoured(res):
    d = ds("julia", resolution=res, seed=1)
    x = d.get([0, 1]).x
    assert x.shape == (2, 3, res, res) and d.info.resolution == res and d.info.shape == (3, res, res)


def test_supersample_averages_subpixels():
    P = F.sample_params(0, np.arange(6), 0, "any")
    ss2 = F.render(P, 16, supersample=2)
    fine = F.render(P, 32).float()
    box = fine.view(6, 3, 16, 2, 16, 2).mean((3, 5))
    assert ss2.shape == (6, 3, 16, 16)
    assert (ss2.float() - box).abs().max() <= 1.0  # the same sub-pixel grid, averaged
    assert not torch.equal(ss2, F.render(P, 16))
    d = ds("any", seed=0, resolution=16, supersample=2)
    assert torch.equal(d.get([3]).x[0], d.get([1, 3]).x[1])


def test_out_of_range_raises_index_error():
    d = ds(n=5)
    with pytest.raises(IndexError):
        d.get([5])
    with pytest.raises(IndexError):
        d.get([0, -1])
    with pytest.raises(IndexError):
        d[7]
    assert len(d) == 5 and len(d.get([])) == 0


def test_bad_options_are_data_errors():
    with pytest.raises(DataError):
        FractalDataset(family="sierpinski")
    with pytest.raises(DataError):
        open_dataset("fractals:nope", resolution=16)
    with pytest.raises(DataError):
        FractalDataset(channels=2)


def test_open_dataset_spec_builds_the_family():
    d = open_dataset("fractals:kali", resolution=16, n=10, seed=2)
    assert isinstance(d, FractalDataset) and d.info.name == "fractals:kali" and len(d) == 10
    assert (d.get([0, 1]).params[:, F._C["family"]] == 0).all()


# -- caches --------------------------------------------------------------------------------------
def test_memory_cache_returns_the_rendered_bytes():
    d = FractalDataset("any", n=20, resolution=16, seed=7, memory_cache=True)
    first = d.get([4, 2, 9])
    assert d._mem[2][[2, 4, 9]].all() and not d._mem[2][0]
    again = d.get([9, 4, 2, 0])
    assert torch.equal(again.x[:3], first.x[[2, 0, 1]])
    assert torch.equal(again.x[3], ds(n=20, resolution=16, seed=7).get([0]).x[0])


def test_disk_cache_is_shared_by_instances(tmp_path):
    a = FractalDataset("mix", n=12, resolution=16, seed=1, cache_dir=tmp_path, memory_cache=False)
    batch = a.get([1, 5])
    x_path, p_path, mask_path = a.cache_paths()
    assert x_path.exists() and list(np.fromfile(mask_path, dtype=np.uint8).nonzero()[0]) == [1, 5]
    b = FractalDataset("mix", n=12, resolution=16, seed=1, cache_dir=tmp_path, memory_cache=False)
    b.render = None  # a cache hit must not render
    hit = b.get([5, 1])
    assert torch.equal(hit.x, batch.x[[1, 0]]) and torch.equal(hit.params, batch.params[[1, 0]])
    other = FractalDataset("mix", n=12, resolution=16, seed=2, cache_dir=tmp_path, memory_cache=False)
    assert other.cache_paths()[0] != x_path


# -- export --------------------------------------------------------------------------------------
def test_export_writes_pngs_params_and_preview(tmp_path):
    out = export(tmp_path / "frac", 5, resolution=16, seed=3, family="any", progress=False)
    pngs = sorted(p.name for p in out.glob("[0-9]*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(5)]
    with Image.open(out / "000003.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
        img3 = np.asarray(im)
    lines = (out / "params.jsonl").read_text().splitlines()
    assert len(lines) == 5
    rows = [json.loads(line) for line in lines]
    assert [r["index"] for r in rows] == list(range(5)) and all(r["family"] in F._FAMILY_NAMES for r in rows)
    assert (out / ".preview.png").exists()
    # the preview is hidden from image folders: training on the export sees exactly its n images
    from calae.data.folder import scan_images
    assert len(scan_images(out)) == 5
    expected = ds("any", n=5, resolution=16, seed=3).get([3]).x[0].permute(1, 2, 0).numpy()
    assert np.array_equal(img3, expected)


def test_export_grey(tmp_path):
    out = export(tmp_path / "g", 2, resolution=12, seed=0, family="julia", channels=1, progress=False)
    with Image.open(out / "000001.png") as im:
        assert im.mode == "L" and im.size == (12, 12)


# -- deterministic maths helpers -----------------------------------------------------------------
def test_colouring_maths_is_accurate_continuous_and_monotone():
    x = torch.logspace(-20, 20, 20001)
    y = F._log2(x)
    assert (y - torch.log2(x)).abs().max() < 0.008
    assert (y[1:] >= y[:-1]).all()  # increasing, no jumps at powers of two
    assert torch.equal(F._log2(torch.tensor([1.0, 2.0, 1024.0, 2.0 ** -10])), torch.tensor([0.0, 1.0, 10.0, -10.0]))
    t = torch.linspace(-3, 3, 40001)
    assert (F._cos2pi(t) - torch.cos(2 * math.pi * t.double()).float()).abs().max() < 1e-3
