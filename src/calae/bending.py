"""Network bending (Broad, Leymarie & Grierson, "Network Bending: Expressive Manipulation of
Generative Models in Multiple Domains", 2021; methods.md §4).

Deterministic transforms inserted after chosen layers of a trained decoder, at inference only:
translate, scale, rotate, erode, dilate, multiply, threshold, flip-h, flip-v, invert, ablate. Each
acts on a layer's feature maps [N, C, H, W], on all channels, a seeded random fraction of them, or
one cluster of channels whose activation maps look alike. Everything is plain torch (no OpenCV,
no compiled extension), and it is attached with forward hooks on the module ``calae.api.Model.decoder``
names, so no method's code changes and nothing is written into a snapshot:

    import calae.api as ca
    from calae.bending import Bend

    model = ca.load("runs/vae")
    with model.bend(Bend("blocks.2", "rotate:90"), Bend("blocks.2", "dilate:3", channels="cluster:1")):
        bent = model.sample(16, seed=0)                 # hooks live only inside the block
    plain = model.sample(16, seed=0)                    # bit-identical to before

Bends on the same layer run in the order given (they chain); several layers may be bent at once.
The hooks change the shared decoder for as long as the block lasts, so one thread bends at a time
(the explorer's server holds its model lock around every call).

Channel clusters: the published method trains a small classifier per layer and runs k-means on its
embedding. We embed each channel by its own activation maps over a fixed set of samples (each map
average-pooled to at most 8×8, the channel's vector centred and scaled to unit length, so two
channels are close when their maps are correlated) and run seeded k-means++ on that; the result is
saved next to the run (``bend_clusters.json``) and reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import weakref

import torch
import torch.nn.functional as F

__all__ = ["Bend", "BendError", "TRANSFORMS", "transform", "layers", "bent", "cluster_channels", "clusters",
           "parse_bends", "load_bends"]

CLUSTER_SAMPLES = 64  # samples whose activation maps embed each channel
CLUSTER_POOL = 8  # maps are average-pooled to at most this side before clustering
DEFAULT_CLUSTERS = 5


class BendError(ValueError):
    """A bend that cannot be applied (unknown layer or transform, bad parameter); one line."""


# ---- the transforms: [N, C, H, W] -> [N, C, H, W] ------------------------------------------------
def _translate(x, dx: float = 0.0, dy: float = 0.0):
    """Shift by fractions of the width (dx, + is right) and height (dy, + is down); what moves in is 0."""
    h, w = x.shape[-2:]
    sx, sy = int(round(dx * w)), int(round(dy * h))
    out = torch.zeros_like(x)
    if abs(sx) >= w or abs(sy) >= h:
        return out
    ys, yd = (slice(0, h - sy), slice(sy, h)) if sy >= 0 else (slice(-sy, h), slice(0, h + sy))
    xs, xd = (slice(0, w - sx), slice(sx, w)) if sx >= 0 else (slice(-sx, w), slice(0, w + sx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _affine(x, theta: torch.Tensor):
    """Resample x at theta·p (normalised coordinates, centre 0), bilinear, zeros outside."""
    n = x.shape[0]
    grid = F.affine_grid(theta.to(x.dtype)[None].expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(x, factor: float = 1.0):
    """Zoom about the centre by `factor` (2: twice as large, cropped; 0.5: shrunk, zeros around)."""
    if factor <= 0:
        raise BendError(f"scale factor must be > 0; got {factor}")
    if factor == 1.0:
        return x.clone()
    s = 1.0 / factor
    return _affine(x, torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0]]))


def _rotate(x, angle: float = 0.0):
    """Rotate about the centre by `angle` degrees, counter-clockwise as the image is seen. Multiples
    of 90° are exact (torch.rot90, on square maps); other angles resample bilinearly, zeros at the
    corners."""
    if angle % 90 == 0 and x.shape[-1] == x.shape[-2]:
        return torch.rot90(x, int(angle // 90) % 4, dims=(-2, -1))
    return _rotate_resampled(x, angle)


def _rotate_resampled(x, angle: float):
    # output pixel p samples the input at R(-angle)·p, with y pointing down (image coordinates)
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    return _affine(x, torch.tensor([[c, -s, 0.0], [s, c, 0.0]]))


def _kernel(size) -> int:
    k = int(size)
    if k < 1 or k % 2 == 0:
        raise BendError(f"erode/dilate size must be an odd whole number >= 1; got {size}")
    return k


def _dilate(x, size: int = 3):
    """Grey-scale dilation: each value becomes the maximum of its size×size neighbourhood."""
    k = _kernel(size)
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def _erode(x, size: int = 3):
    """Grey-scale erosion: the minimum of each size×size neighbourhood (the map's border acts as -inf
    padding for max-pool, so erosion does not pull values in from outside)."""
    k = _kernel(size)
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


def _multiply(x, factor: float = 1.0):
    return x * factor


def _threshold(x, value: float = 0.0):
    """Binary threshold: 1 where the activation exceeds `value`, else 0."""
    return (x > value).to(x.dtype)


def _invert(x):
    """Mirror each map's values within its own range (min + max - x). The published tool's 1 - x
    assumes activations in [0, 1]; these are not, so each map keeps its range."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return lo + hi - x


@dataclass(frozen=True)
class Transform:
    name: str
    fn: Callable
    params: tuple[str, ...]  # parameter names, in the order NAME:A,B gives them
    defaults: tuple[float, ...]
    doc: str


TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("translate", _translate, ("x", "y"), (0.0, 0.0), "shift by fractions of width and height"),
    Transform("scale", _scale, ("factor",), (1.0,), "zoom about the centre"),
    Transform("rotate", _rotate, ("angle",), (0.0,), "rotate by degrees, counter-clockwise"),
    Transform("erode", _erode, ("size",), (3,), "minimum over an odd size×size window"),
    Transform("dilate", _dilate, ("size",), (3,), "maximum over an odd size×size window"),
    Transform("multiply", _multiply, ("factor",), (1.0,), "scalar multiply"),
    Transform("threshold", _threshold, ("value",), (0.0,), "binary: 1 above value, else 0"),
    Transform("flip-h", lambda x: torch.flip(x, dims=(-1,)), (), (), "mirror left-right"),
    Transform("flip-v", lambda x: torch.flip(x, dims=(-2,)), (), (), "mirror top-bottom"),
    Transform("invert", _invert, (), (), "min + max - x per map"),
    Transform("ablate", lambda x: torch.zeros_like(x), (), (), "set to zero"),
)}


def transform(x: torch.Tensor, name: str, *params: float) -> torch.Tensor:
    """Apply one named transform to feature maps [N, C, H, W] (all channels)."""
    t = _transform(name)
    if len(params) > len(t.params):
        raise BendError(f"{name} takes {len(t.params)} parameter(s) ({', '.join(t.params) or 'none'}); "
                        f"got {len(params)}")
    return t.fn(x, *params)


# the issue's / published tool's longer names
ALIASES = {"scalar-multiply": "multiply", "binary-threshold": "threshold", "binary-thresh": "threshold"}


def _transform(name: str) -> Transform:
    name = ALIASES.get(name, name)
    if name not in TRANSFORMS:
        raise BendError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


# ---- a bend: one transform on one layer's channels ----------------------------------------------
@dataclass(frozen=True)
class Bend:
    """``Bend(layer, "rotate:45", channels="cluster:2")``: the transform NAME[:A,B] after the decoder
    layer `layer` (a submodule name, see ``layers``), on ``channels``: ``all``, ``random:P`` (a seeded
    fraction P of them), ``cluster:K`` (cluster K of ``clusters`` k-means groups) or ``0,5,7``."""

    layer: str
    transform: str
    channels: str = "all"
    seed: int = 0  # random:P draws its channels from this seed
    n_clusters: int = DEFAULT_CLUSTERS
    name: str = field(init=False)
    params: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        name, _, rest = str(self.transform).partition(":")
        t = _transform(name.strip())
        try:
            params = tuple(float(p) for p in rest.split(",") if p.strip()) if rest else ()
        except ValueError:
            raise BendError(f"transform parameters must be numbers, as in rotate:45 or translate:0.25,0; "
                            f"got {self.transform!r}") from None
        if len(params) > len(t.params):
            raise BendError(f"{t.name} takes {len(t.params)} parameter(s) ({', '.join(t.params) or 'none'}); "
                            f"got {self.transform!r}")
        if t.name in ("erode", "dilate") and params:
            _kernel(params[0])
        if t.name == "scale" and params and params[0] <= 0:
            raise BendError(f"scale factor must be > 0; got {self.transform!r}")
        _parse_channels(self.channels)
        object.__setattr__(self, "name", t.name)
        object.__setattr__(self, "params", params + t.defaults[len(params):])

    def with_param(self, param: str, value: float) -> "Bend":
        """The same bend with one named parameter changed (``--animate angle=0:360``)."""
        t = TRANSFORMS[self.name]
        if param not in t.params:
            raise BendError(f"{self.name} has no parameter {param!r}; its parameters: {', '.join(t.params) or 'none'}")
        p = list(self.params)
        p[t.params.index(param)] = value
        spec = f"{self.name}:{','.join(repr(float(v)) for v in p)}"
        return Bend(self.layer, spec, self.channels, self.seed, self.n_clusters)

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        fn = TRANSFORMS[self.name].fn
        if mask is None:
            return fn(x, *self.params)
        idx = mask.nonzero()[:, 0].to(x.device)
        out = x.clone()
        out[:, idx] = fn(x[:, idx], *self.params)
        return out

    def to_dict(self) -> dict:
        return {"layer": self.layer, "transform": self.transform, "channels": self.channels, "seed": self.seed,
                "clusters": self.n_clusters}


def _parse_channels(spec: str):
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    try:
        if spec == "all":
            return ("all", None)
        if kind == "random":
            p = float(arg)
            if not 0 < p <= 1:
                raise ValueError
            return ("random", p)
        if kind == "cluster":
            return ("cluster", int(arg))
        idx = [int(c) for c in spec.split(",") if c.strip()]
        if idx and min(idx) >= 0:
            return ("list", idx)
    except ValueError:
        pass
    raise BendError(f"channels must be all, random:P (0 < P <= 1), cluster:K or a list like 0,3,5; got {spec!r}")


# ---- the decoder's layers -----------------------------------------------------------------------
def _probe_code(model) -> torch.Tensor:
    return model.sample_latents(1, seed=0)


_LAYERS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def layers(model, blocks_only: bool = True) -> dict[str, tuple[int, int, int]]:
    """Decoder submodules whose output is a feature map: name -> (C, H, W), in the order they run.
    ``blocks_only`` keeps names of at most two parts (``blocks.3``, ``fc``, ``to_rgb.2``), the
    blocks a user means; False lists every convolution and activation inside them too. Found by one
    probe decode, remembered per decoder (a loaded model's weights and shapes never change)."""
    dec = model.decoder
    memo = _LAYERS.setdefault(dec, {})
    if blocks_only in memo:
        return dict(memo[blocks_only])
    shapes: dict[str, tuple[int, int, int]] = {}
    handles = []

    def record(name):
        def hook(_mod, _inp, out):
            if torch.is_tensor(out) and out.dim() == 4 and name not in shapes:
                shapes[name] = tuple(out.shape[1:])
        return hook

    for name, mod in dec.named_modules():
        if name and (not blocks_only or name.count(".") <= 1):
            handles.append(mod.register_forward_hook(record(name)))
    try:
        model.decode_tensor(_probe_code(model), **model.display_options())
    finally:
        for h in handles:
            h.remove()
    memo[blocks_only] = shapes
    return dict(shapes)


def _check_layers(model, bends: list[Bend]) -> dict[str, tuple[int, int, int]]:
    known = layers(model, blocks_only=False)
    for b in bends:
        if b.layer not in known:
            top = layers(model)
            if not top:
                raise BendError(f"this {model.name} model's decoder has no convolutional layers to bend "
                                "(an MLP decoder); bending needs feature maps")
            raise BendError(f"the decoder has no feature-map layer {b.layer!r}; its layers: "
                            + ", ".join(f"{n} {list(s)}" for n, s in top.items()))
    return known


def _mask(model, b: Bend, channels: int) -> torch.Tensor | None:
    kind, arg = _parse_channels(b.channels)
    if kind == "all":
        return None
    mask = torch.zeros(channels, dtype=torch.bool)
    if kind == "random":
        g = torch.Generator().manual_seed(int(b.seed))
        k = max(1, int(round(arg * channels)))
        mask[torch.randperm(channels, generator=g)[:k]] = True
    elif kind == "cluster":
        labels = clusters(model, b.layer, b.n_clusters)
        if not 0 <= arg < b.n_clusters:
            raise BendError(f"cluster:{arg} is out of range: layer {b.layer} has clusters 0..{b.n_clusters - 1}")
        mask = torch.as_tensor(labels) == arg
    else:
        if max(arg) >= channels:
            raise BendError(f"layer {b.layer} has channels 0..{channels - 1}; got channel {max(arg)}")
        mask[arg] = True
    return mask


@contextlib.contextmanager
def bent(model, bends: Iterable[Bend]) -> Iterator:
    """Decode through the model with the bends hooked into its decoder; the hooks are removed on
    leaving the block, whatever happens, so the unbent output is bit-identical afterwards."""
    bends = [b for b in bends]
    if not bends:
        yield model
        return
    known = _check_layers(model, bends)
    by_layer: dict[str, list[tuple[Bend, torch.Tensor | None]]] = {}
    for b in bends:  # channel masks resolved (and clusters computed) before any hook is live
        by_layer.setdefault(b.layer, []).append((b, _mask(model, b, known[b.layer][0])))
    dec = model.decoder
    handles = []

    def hook_for(chain):
        def hook(_mod, _inp, out):
            for b, mask in chain:
                out = b.apply(out, mask)
            return out
        return hook

    try:
        for name, chain in by_layer.items():
            handles.append(dec.get_submodule(name).register_forward_hook(hook_for(chain)))
        yield model
    finally:
        for h in handles:
            h.remove()


# ---- channel clusters ---------------------------------------------------------------------------
def cluster_channels(acts: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """k-means++ labels [C] of a layer's channels from their activation maps acts [S, C, H, W]:
    each channel's maps over the S samples, pooled to at most 8×8, centred and scaled to unit length
    (channels whose maps correlate are near each other). Deterministic given the seed."""
    s, c, h, w = acts.shape
    if not 1 <= k <= c:
        raise BendError(f"cannot make {k} clusters of {c} channels")
    a = acts.float()
    if max(h, w) > CLUSTER_POOL:
        a = F.adaptive_avg_pool2d(a, (min(h, CLUSTER_POOL), min(w, CLUSTER_POOL)))
    e = a.transpose(0, 1).reshape(c, -1).double()  # [C, S·h·w]
    e = e - e.mean(1, keepdim=True)
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g = torch.Generator().manual_seed(int(seed))
    centres = [e[int(torch.randint(c, (1,), generator=g))]]
    for _ in range(1, k):  # k-means++: the next centre drawn in proportion to squared distance
        d2 = torch.cdist(e, torch.stack(centres)).min(1).values ** 2
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((c,), 1.0 / c, dtype=e.dtype)
        centres.append(e[int(torch.multinomial(p, 1, generator=g))])
    cen = torch.stack(centres)
    labels = torch.full((c,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(e, cen).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                cen[j] = e[labels == j].mean(0)
    return labels


_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _fingerprint(model) -> str:
    if model.decoder in _FINGERPRINTS:
        return _FINGERPRINTS[model.decoder]
    h = hashlib.sha1()
    for name, p in model.decoder.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    _FINGERPRINTS[model.decoder] = fp = h.hexdigest()[:16]
    return fp


def _cluster_file(model) -> Path | None:
    src = getattr(model, "source", None)
    if src is None:
        return None
    src = Path(src)
    return src / "bend_clusters.json" if src.is_dir() else src.with_name(src.stem + ".bend_clusters.json")


_MEMO: dict[tuple, list[int]] = {}


def clusters(model, layer: str, k: int = DEFAULT_CLUSTERS, seed: int = 0) -> list[int]:
    """Cluster labels of `layer`'s channels (``cluster_channels`` over CLUSTER_SAMPLES samples drawn
    from the model's latent with `seed`), read from / saved to ``bend_clusters.json`` beside the run
    (keyed by layer, k, seed and a fingerprint of the decoder's weights, so a retrained run is
    clustered again). A run folder that cannot be written is clustered in memory, once."""
    key = f"{layer}|k={k}|seed={seed}|n={CLUSTER_SAMPLES}|{_fingerprint(model)}"
    memo_key = (id(model.decoder), key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    path = _cluster_file(model)
    saved = {}
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    if key in saved:
        _MEMO[memo_key] = saved[key]
        return saved[key]
    acts = []
    mod = model.decoder.get_submodule(layer)
    h = mod.register_forward_hook(lambda _m, _i, out: acts.append(out.detach().float().cpu()))
    try:
        model.decode_tensor(model.sample_latents(CLUSTER_SAMPLES, seed=seed + 7919))
    finally:
        h.remove()
    labels = cluster_channels(torch.cat(acts), k, seed).tolist()
    _MEMO[memo_key] = labels
    if path is not None:
        saved[key] = labels
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(saved, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only run folder: keep them in memory only
    return labels


# ---- specs from the command line and from files -------------------------------------------------
def parse_bends(items: list[dict]) -> list[Bend]:
    """Bends from dicts ``{"layer", "transform", "params"?, "channels"?, "seed"?, "clusters"?}``; the
    transform may carry its parameters (``"rotate:45"``) or take them from ``params`` (a list)."""
    out = []
    if not isinstance(items, list):
        raise BendError("a bend list must be a list of {layer, transform, ...} objects")
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "layer" not in it or "transform" not in it:
            raise BendError(f"bend {i} needs a layer and a transform, as {{\"layer\": \"blocks.2\", "
                            f"\"transform\": \"rotate:45\"}}; got {it!r}")
        unknown = set(it) - {"layer", "transform", "params", "channels", "seed", "clusters"}
        if unknown:
            raise BendError(f"bend {i} has unknown key(s) {', '.join(sorted(unknown))}; known: layer, transform, "
                            "params, channels, seed, clusters")
        spec = str(it["transform"])
        if it.get("params") not in (None, []):
            ps = it["params"] if isinstance(it["params"], list) else [it["params"]]
            spec = f"{spec}:{','.join(str(p) for p in ps)}"
        try:
            out.append(Bend(str(it["layer"]), spec, str(it.get("channels", "all")), int(it.get("seed", 0)),
                            int(it.get("clusters", DEFAULT_CLUSTERS))))
        except (TypeError, ValueError) as e:
            raise BendError(f"bend {i}: {e}") from None
    return out


def load_bends(path: str | os.PathLike) -> list[Bend]:
    """A JSON or YAML file of bends: a list, or ``{"bends": [...]}`` (the published tool's
    ``transforms`` key is accepted too)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise BendError(f"{path} is YAML, which needs PyYAML: pip install pyyaml (or write it as JSON)") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BendError(f"{path} is not valid JSON ({e})") from None
    if isinstance(data, dict):
        data = data.get("bends", data.get("transforms"))
    return parse_bends(data)
