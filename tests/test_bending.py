"""Network bending: each transform on a hand case, channel selection, clusters, and hooks on real
decoders (vae and StyleALAE) that bend only while applied and leave the output bit-identical after."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import calae.api as ca
from calae import bending
from calae.bending import Bend, BendError, transform
from calae.config import TrainConfig
from calae.training import Trainer

from conftest import ROOT, tiny_model_cfg


def asym() -> torch.Tensor:
    """An asymmetric 3×3 map [1, 1, 3, 3]: 0..8 row by row."""
    return torch.arange(9.0).view(1, 1, 3, 3)


# ---- transforms on hand cases ----------------------------------------------------------------
def test_rotate_90_of_an_asymmetric_map():
    x = asym()
    # counter-clockwise as seen: the top row's right end (2) goes to the top-left corner
    assert transform(x, "rotate", 90)[0, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    assert torch.equal(transform(x, "rotate", 180)[0, 0], x[0, 0].flip(0).flip(1))
    assert torch.equal(transform(x, "rotate", 360), x)
    # the resampling path (any angle) agrees with the exact one at 90°
    x5 = torch.randn(2, 3, 5, 5)
    assert torch.allclose(bending._rotate_resampled(x5, 90.0), torch.rot90(x5, 1, dims=(-2, -1)), atol=1e-5)
    y = transform(x5, "rotate", 30)
    assert y.shape == x5.shape and not torch.allclose(y, x5)


def test_dilate_and_erode_of_a_single_pixel():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    d = transform(x, "dilate", 3)
    want = torch.zeros(5, 5)
    want[1:4, 1:4] = 1
    assert torch.equal(d[0, 0], want)  # one pixel grows to a 3×3 square
    assert torch.equal(transform(d, "erode", 3), x)  # and the square erodes back to it
    assert torch.equal(transform(x, "erode", 3), torch.zeros_like(x))
    with pytest.raises(BendError, match="odd whole number"):
        Bend("a", "dilate:2")


def test_translate_scale_flip_and_the_numeric_transforms():
    x = asym()
    t = transform(x, "translate", 1 / 3, 0)  # one pixel right; what moves in is zero
    assert t[0, 0].tolist() == [[0, 0, 1], [0, 3, 4], [0, 6, 7]]
    assert transform(x, "translate", 0, -1 / 3)[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [0, 0, 0]]
    assert torch.equal(transform(x, "translate", 1, 0), torch.zeros_like(x))
    assert torch.equal(transform(x, "scale", 1.0), x)
    sq = torch.zeros(1, 1, 8, 8)
    sq[0, 0, 2:6, 2:6] = 1  # a centred 4×4 square
    z = transform(sq, "scale", 2.0)[0, 0]  # doubled (bilinear): ones from pixel 1 to 6, a soft edge
    assert torch.allclose(z[1:7, 1:7], torch.ones(6, 6), atol=1e-6) and 0 < z[0, 0] < 1
    s = transform(sq, "scale", 0.5)[0, 0]  # halved: a 2×2 square, zeros around it
    assert torch.allclose(s[3:5, 3:5], torch.ones(2, 2), atol=1e-6) and float(s[:2].abs().sum()) == 0
    assert transform(x, "flip-h")[0, 0, 0].tolist() == [2, 1, 0]
    assert transform(x, "flip-v")[0, 0, :, 0].tolist() == [6, 3, 0]
    assert torch.equal(transform(x, "multiply", 2), 2 * x)
    assert transform(x, "threshold", 4.5)[0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 1]]
    assert torch.equal(transform(x, "invert"), 8 - x)  # min + max - x
    assert torch.equal(transform(torch.randn(2, 4, 3, 3), "ablate"), torch.zeros(2, 4, 3, 3))


def test_bend_specs_parse_and_refuse_bad_ones():
    b = Bend("blocks.1", "translate:0.25")
    assert (b.name, b.params) == ("translate", (0.25, 0.0))  # missing parameters take the defaults
    assert Bend("blocks.1", "rotate:10").with_param("angle", 45).params == (45.0,)
    assert (Bend("a", "scalar-multiply:2").name, Bend("a", "binary-threshold:0.5").name) == ("multiply", "threshold")
    assert torch.equal(transform(asym(), "scalar-multiply", 2), 2 * asym())
    for spec, msg in [("spin:3", "unknown transform 'spin'"), ("rotate:a", "must be numbers"),
                      ("rotate:1,2", "rotate takes 1 parameter"), ("scale:0", "scale factor must be > 0")]:
        with pytest.raises(BendError, match=msg):
            Bend("x", spec)
    with pytest.raises(BendError, match="channels must be all, random:P"):
        Bend("x", "invert", channels="some")
    assert [b.name for b in bending.parse_bends([{"layer": "a", "transform": "rotate", "params": [90]},
                                                 {"layer": "a", "transform": "ablate", "channels": "0,2"}])] == \
        ["rotate", "ablate"]
    with pytest.raises(BendError, match="unknown key"):
        bending.parse_bends([{"layer": "a", "transform": "ablate", "colour": 1}])


def test_a_channel_mask_touches_only_its_channels():
    x = torch.randn(2, 4, 3, 3)
    mask = torch.tensor([False, True, False, True])
    y = Bend("l", "ablate").apply(x, mask)
    assert torch.equal(y[:, [0, 2]], x[:, [0, 2]]) and torch.equal(y[:, [1, 3]], torch.zeros(2, 2, 3, 3))


def test_clusters_group_channels_whose_maps_look_alike_and_are_deterministic():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 32, 6, 6, generator=g)  # three activation patterns over 32 samples
    group = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    scale = 0.5 + torch.rand(12, generator=g)  # different magnitudes: the embedding ignores them
    acts = base[group].transpose(0, 1) * scale[None, :, None, None] + 0.05 * torch.randn(32, 12, 6, 6, generator=g)
    labels = bending.cluster_channels(acts, 3, seed=1)
    for k in range(3):  # each true group is one cluster, and the three clusters differ
        assert len(set(labels[group == k].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    assert torch.equal(labels, bending.cluster_channels(acts, 3, seed=1))


# ---- on trained decoders --------------------------------------------------------------------------
def train(method, out, data="fractals", **model):
    cfg = TrainConfig(method=method, data=data, resolution=16, kimg=0.032, batch_size=16, precision="fp32",
                      sample_every_kimg=100, snapshot_every_kimg=100, n_data=64)
    Trainer(cfg, dict(tiny_model_cfg(method), **model), out, progress=False, pictures=False).run()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bend")
    return {m: train(m, root / m) for m in ("vae", "alae")}


@pytest.mark.parametrize("method", ["vae", "alae"])
def test_a_bend_changes_the_output_only_while_applied(runs, method):
    m = ca.load(runs[method])
    found = bending.layers(m)
    assert found and all(len(s) == 3 for s in found.values())
    layer = next(iter(found))  # the first feature map: its change reaches the image
    codes = m.sample_latents(4, seed=0)
    before = m.decode(codes)
    with m.bend(Bend(layer, "rotate:90"), Bend(layer, "multiply:3")):
        bent = m.decode(codes)
        assert len(m.decoder.get_submodule(layer)._forward_hooks) == 1
    after = m.decode(codes)
    assert not torch.equal(bent, before)
    assert torch.equal(after, before)  # hooks removed: bit-identical
    assert all(not mod._forward_hooks for mod in m.decoder.modules())
    with pytest.raises(RuntimeError):  # removed on an error inside the block too
        with m.bend(Bend(layer, "ablate")):
            raise RuntimeError
    assert torch.equal(m.decode(codes), before)
    with pytest.raises(BendError, match="no feature-map layer 'nope'; its layers: "):
        with m.bend(Bend("nope", "ablate")):
            pass


def test_cluster_channels_of_a_run_are_saved_beside_it_and_reused(runs):
    m = ca.load(runs["vae"])
    layer = "blocks.0"
    labels = bending.clusters(m, layer, k=3, seed=0)
    assert len(labels) == bending.layers(m)[layer][0] and set(labels) <= {0, 1, 2}
    saved = json.loads((runs["vae"] / "bend_clusters.json").read_text())
    assert list(saved.values()) == [labels]
    bending._MEMO.clear()
    m2 = ca.load(runs["vae"])
    assert bending.clusters(m2, layer, k=3, seed=0) == labels  # read back from the file
    codes = m.sample_latents(2, seed=0)
    sel = [c for c in range(len(labels)) if labels[c] == 0]
    with m.bend(Bend(layer, "ablate", channels="cluster:0", n_clusters=3)):
        a = m.decode(codes)
    with m.bend(Bend(layer, "ablate", channels=",".join(map(str, sel)))):
        b = m.decode(codes)
    assert torch.equal(a, b)  # cluster:0 is exactly those channels


def test_bend_cli_writes_pictures_and_gifs(runs, tmp_path, cli_env):
    run = str(runs["vae"])
    cfg = tmp_path / "bends.json"
    cfg.write_text(json.dumps({"bends": [{"layer": "blocks.0", "transform": "dilate", "params": [3]}]}))

    def calae(*args):
        return subprocess.run([sys.executable, "-m", "calae", "bend", run, *args], capture_output=True, text=True,
                              env=cli_env, cwd=ROOT, timeout=120)

    r = calae("--layer", "blocks.0", "--transform", "rotate:90", "--channels", "random:0.5", "--layer", "blocks.2",
              "--transform", "flip-h", "--config", str(cfg), "--n", "4", "--compare", "--out", str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.png").stat().st_size > 0
    from PIL import Image

    from calae.viz.grid import viewable_scale

    # pictures are enlarged to a viewable width by default, --scale N sets the factor
    sizes = {}
    for k in (1, 3):
        r = calae("--layer", "blocks.0", "--transform", "flip-v", "--n", "4", "--compare", "--scale", str(k),
                  "--out", str(tmp_path / f"s{k}.png"))
        assert r.returncode == 0, r.stderr
        sizes[k] = Image.open(tmp_path / f"s{k}.png").size
    assert sizes[3] == (3 * sizes[1][0], 3 * sizes[1][1])
    assert Image.open(tmp_path / "b.png").size == tuple(v * viewable_scale(*sizes[1]) for v in sizes[1])
    assert viewable_scale(*sizes[1]) > 1
    r = calae("--layer", "blocks.0", "--transform", "rotate", "--animate", "angle=0:180", "--frames", "3", "--n", "2",
              "--out", str(tmp_path / "b.gif"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "b.gif").n_frames == 3
    r = calae("--layer", "nope", "--transform", "ablate", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "its layers: blocks.0" in r.stderr
    r = calae("--list-layers")
    assert r.returncode == 0 and r.stdout.startswith("blocks.0")


def test_bends_chain_in_order_and_several_layers_bend_at_once(runs):
    m = ca.load(runs["vae"])
    l0, l1 = list(bending.layers(m))[:2]
    codes = m.sample_latents(3, seed=2)

    def by_hand(steps):
        """Forward hooks written here: each layer's output through its transforms, in order."""
        hs = []
        for layer, fns in steps.items():
            def hook(_m, _i, out, fns=fns):
                for name, params in fns:
                    out = transform(out, name, *params)
                return out
            hs.append(m.decoder.get_submodule(layer).register_forward_hook(hook))
        try:
            return m.decode(codes)
        finally:
            for h in hs:
                h.remove()

    with m.bend(Bend(l1, "rotate:90"), Bend(l1, "translate:0.25,0"), Bend(l0, "flip-v")):
        chained = m.decode(codes)
    assert torch.equal(chained, by_hand({l1: [("rotate", (90,)), ("translate", (0.25, 0))], l0: [("flip-v", ())]}))
    with m.bend(Bend(l1, "translate:0.25,0"), Bend(l1, "rotate:90"), Bend(l0, "flip-v")):
        reversed_ = m.decode(codes)
    assert not torch.equal(chained, reversed_)  # order matters: translate∘rotate != rotate∘translate
    with m.bend(Bend(l1, "rotate:90"), Bend(l1, "translate:0.25,0")):
        one_layer = m.decode(codes)
    assert not torch.equal(chained, one_layer)  # the second layer's bend took part


def test_a_yaml_file_of_bends_is_the_json_one(tmp_path):
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    bends = [{"layer": "blocks.1", "transform": "rotate", "params": [45]},
             {"layer": "blocks.2", "transform": "dilate:3", "channels": "cluster:2", "clusters": 4},
             {"layer": "blocks.2", "transform": "multiply", "params": 2, "channels": "random:0.25", "seed": 7}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"transforms": bends}))  # the published tool's key
    (tmp_path / "b.json").write_text(json.dumps({"bends": bends}))
    got = bending.load_bends(tmp_path / "b.yaml")
    assert got == bending.load_bends(tmp_path / "b.json")
    assert [(b.layer, b.name, b.params, b.channels, b.seed, b.n_clusters) for b in got] == [
        ("blocks.1", "rotate", (45.0,), "all", 0, 5), ("blocks.2", "dilate", (3.0,), "cluster:2", 0, 4),
        ("blocks.2", "multiply", (2.0,), "random:0.25", 7, 5)]
    (tmp_path / "bad.yaml").write_text("- layer: blocks.1\n  transform: spin\n")
    with pytest.raises(BendError, match="unknown transform 'spin'"):
        bending.load_bends(tmp_path / "bad.yaml")


def test_clusters_of_a_run_are_deterministic_by_seed(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["vae"], run)
    layer = "blocks.1"
    first = bending.clusters(ca.load(run), layer, k=4, seed=3)
    (run / "bend_clusters.json").unlink()
    bending._MEMO.clear()
    again = bending.clusters(ca.load(run), layer, k=4, seed=3)  # recomputed from scratch
    assert again == first
    saved = json.loads((run / "bend_clusters.json").read_text())
    assert len(saved) == 1 and f"{layer}|k=4|seed=3" in next(iter(saved))


def test_bend_cli_clusters_and_animation_frames(runs, tmp_path, cli_env):
    import shutil

    from PIL import Image

    run = tmp_path / "copy"
    shutil.copytree(runs["vae"], run)
    (run / "bend_clusters.json").unlink(missing_ok=True)

    def calae(*args):
        return subprocess.run([sys.executable, "-m", "calae", "bend", str(run), *args], capture_output=True, text=True,
                              env=cli_env, cwd=ROOT, timeout=120)

    r = calae("--layer", "blocks.1", "--transform", "ablate", "--channels", "cluster:1", "--clusters", "3", "--n", "2",
              "--out", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    saved = json.loads((run / "bend_clusters.json").read_text())
    assert [k.split("|")[:2] for k in saved] == [["blocks.1", "k=3"]] and set(next(iter(saved.values()))) <= {0, 1, 2}
    r = calae("--layer", "blocks.1", "--transform", "ablate", "--channels", "cluster:3", "--clusters", "3",
              "--out", str(tmp_path / "d.png"))
    assert r.returncode == 2 and "clusters 0..2" in r.stderr and r.stderr.count("\n") == 1
    r = calae("--layer", "blocks.0", "--transform", "multiply:1", "--animate", "factor=-1:1", "--frames", "3",
              "--n", "2", "--out", str(tmp_path / "m.gif"))
    assert r.returncode == 0, r.stderr
    gif = Image.open(tmp_path / "m.gif")
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    assert len(frames) == 3 and np.abs(frames[0] - frames[2]).max() > 0  # the sweep changes the picture
    r = calae("--layer", "blocks.0", "--transform", "rotate", "--animate", "size=0:3", "--out", str(tmp_path / "x.gif"))
    assert r.returncode == 2 and "no transform given has a parameter 'size'" in r.stderr


@pytest.mark.parametrize("method", ["aae", "as_intro_vae", "calae", "gan", "soft_intro_vae", "vae_gan"])
def test_every_convolutional_decoder_bends_and_its_snapshot_is_untouched(method, tmp_path):
    import hashlib

    conv = {"arch": "conv", "base_channels": 8, "max_channels": 16} if method == "aae" else {}  # tiny AAE: MLP
    run = train(method, tmp_path / method, **conv)
    digest = lambda: hashlib.sha256((run / "snapshot.safetensors").read_bytes()).hexdigest()  # noqa: E731
    before_file = digest()
    m = ca.load(run)
    found = bending.layers(m)
    assert found, f"{method}: no feature-map layers found in its decoder"
    layer = next(iter(found))
    codes = m.sample_latents(3, seed=0)
    before = m.decode(codes)
    with m.bend(Bend(layer, "multiply:-1"), Bend(layer, "flip-h")):
        bent = m.decode(codes)
    assert not torch.equal(bent, before)
    assert torch.equal(m.decode(codes), before)
    assert digest() == before_file and "bend" not in json.dumps(m.meta)


def test_an_mlp_decoder_is_refused_in_one_line(tmp_path):
    m = ca.load(train("aae", tmp_path / "mlp"))  # the tiny AAE has MLP nets
    assert bending.layers(m) == {}
    with pytest.raises(BendError, match="no convolutional layers to bend .an MLP decoder."):
        with m.bend(Bend("net.0", "ablate")):
            pass
