"""The explorer's server: Starlette routes over ``Explorer``, served by uvicorn on 127.0.0.1.

Why Starlette + uvicorn (the ``web`` extra): both are small, maintained and pure-Python-installable
from PyPI; Starlette runs our blocking torch work in its thread pool while the event loop keeps
answering, and uploads can be read as a stream with a byte limit before anything is decoded. The
page is three static files shipped in this package (``static/``); nothing comes from a CDN.

Security: the server binds 127.0.0.1 unless ``--host`` says otherwise (then it warns); no request
names a file: the page's three files are served from a fixed table, codes travel as numbers and
uploads as bytes (size-limited, opened by Pillow with the data loader's checks: header first,
pixel-count limit, full decode); every model call holds one lock, because bends hook the shared
decoder while they are active (the calls themselves are read-only: eval mode, no_grad, frozen
weights).
"""
from __future__ import annotations

import base64
import io
import json
import socket
import sys
import threading
import time
from importlib import resources

import numpy as np
import torch

from .. import explore
from ..api import APIError
from ..bending import TRANSFORMS, BendError, layers, parse_bends
from ..data.base import DataError

MAX_UPLOAD = 8 * 1024 * 1024  # bytes of an uploaded image
MAX_JSON = 1024 * 1024  # bytes of a JSON request
MAX_UPLOAD_PIXELS = 40_000_000  # decompression-bomb guard for uploads
MAX_STEPS = 64  # interpolation frames
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class RequestError(ValueError):
    """A request the explorer cannot serve; becomes a 400 with {"error": message}."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def png_data_url(img: torch.Tensor) -> str:
    """uint8 [C, H, W] -> a data: URL of its PNG."""
    from ..viz.grid import to_pil

    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gif_data_url(frames: list[torch.Tensor], duration_ms: int = 90) -> str:
    from ..viz.grid import to_pil

    pils = [to_pil(f).convert("RGB") for f in frames]
    buf = io.BytesIO()
    pils[0].save(buf, format="GIF", save_all=True, append_images=pils[1:], duration=duration_ms, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_upload(data: bytes, resolution: int, channels: int, fit: str = "crop") -> np.ndarray:
    """Uploaded bytes -> uint8 [C, R, R], with the folder loader's checks; RequestError if it is not
    a usable image."""
    from ..data.folder import _BadImage, _background, _decode

    if not data:
        raise RequestError("the upload is empty: choose an image file (PNG, JPEG, WebP, BMP, GIF)")
    try:
        return _decode(io.BytesIO(data), resolution, channels, fit, MAX_UPLOAD_PIXELS, _background("black"))
    except _BadImage as e:
        raise RequestError(f"the upload {e}: upload a PNG, JPEG, WebP, BMP or GIF image") from None


class Explorer:
    """What the page asks for, on top of ``calae.api``: the map of the data's codes, decoding any
    code (with sliders along principal directions, decode options, per-layer style mixing and
    bends), samples by seed, uploads, interpolations. Requests carry codes as numbers, so the
    server keeps no per-user state."""

    def __init__(self, model, dataset=None, n: int = 1000, seed: int = 0, directions: int = 8):
        if not model.is_image:
            raise APIError("calae explore shows images; this model was trained on points")
        self.model, self.dataset, self.seed = model, dataset, seed
        self.lock = threading.Lock()  # every model call (bends hook the shared decoder)
        self.map_lock = threading.Lock()
        self.codes = self.labels = self.params = None
        self.param_names: list[str] = []
        self.categories: dict = {}
        if dataset is not None:
            b = explore.load_real(model, dataset, n, seed)
            self.codes = model.encode_tensor(b.x).numpy()
            self.labels = None if b.y is None else b.y.numpy()
            self.params = None if b.params is None else b.params.numpy()
            self.param_names = list(getattr(dataset, "param_names", None) or
                                    ([f"param{i}" for i in range(self.params.shape[1])] if self.params is not None else []))
            self.categories = dict(getattr(dataset, "category_names", {}) or {})
        self.mean, self.dirs, self.sigmas = explore.principal_directions(model, directions, seed=seed)
        self.maps: dict[str, explore.LatentMap] = {}
        with self.lock:
            self.layers = layers(model)  # empty for an MLP decoder

    # ---- what the page needs to draw itself ------------------------------------------------------
    def info(self) -> dict:
        m = self.model
        return {"name": m.name, "latent": {"name": m.latent.name, "dim": m.latent.dim},
                "resolution": m.info.resolution, "channels": m.info.channels,
                "options": [{"name": o.name, "default": o.default, "low": o.low, "high": o.high, "doc": o.doc,
                             "integer": isinstance(o.default, int)} for o in m.options.values()],
                "display_options": m.display_options(), "style_layers": m.style_layers,
                "directions": len(self.sigmas), "projections": explore.projections(),
                "n_points": 0 if self.codes is None else len(self.codes),
                "layers": {k: list(v) for k, v in self.layers.items()},
                "transforms": {k: {"params": list(t.params), "defaults": list(t.defaults), "doc": t.doc}
                               for k, t in TRANSFORMS.items()},
                "max_upload": MAX_UPLOAD}

    def latent_map(self, projection: str) -> explore.LatentMap:
        if self.codes is None:
            raise RequestError("no data to map: start calae explore with --data SPEC")
        if projection not in explore.projections():
            raise RequestError(f"projection must be one of {', '.join(explore.projections())}; got {projection!r}")
        with self.map_lock:  # t-SNE takes seconds: compute each projection once
            if projection not in self.maps:
                self.maps[projection] = explore.LatentMap(self.codes, projection, self.seed)
            return self.maps[projection]

    def map(self, projection: str) -> dict:
        lm = self.latent_map(projection)
        colours = {}
        if self.labels is not None:
            colours["label"] = self.labels.astype(float).tolist()
        if self.params is not None:
            for j, name in enumerate(self.param_names):
                colours[name] = self.params[:, j].astype(float).tolist()
        cats = {k: list(v) for k, v in self.categories.items() if k in colours}
        if "label" in colours:
            cats.setdefault("label", [str(i) for i in range(int(self.labels.max()) + 1)])
        return {"projection": projection, "xy": np.round(lm.xy, 5).tolist(), "colours": colours,
                "categories": cats}

    # ---- decoding ------------------------------------------------------------------------------
    def _code(self, value, what: str = "code") -> torch.Tensor:
        try:
            w = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            raise RequestError(f"{what} must be a list of {self.model.latent.dim} numbers") from None
        if w.shape != (self.model.latent.dim,) or not torch.isfinite(w).all():
            raise RequestError(f"{what} must be a list of {self.model.latent.dim} finite numbers; got shape "
                               f"{list(w.shape)}")
        return w

    def base_code(self, req: dict) -> torch.Tensor:
        """The code a request names: {"code": [...]} or {"map": {"projection", "xy": [u, v]}}."""
        if req.get("map") is not None:
            mp = req["map"]
            try:
                u, v = (float(t) for t in mp["xy"])
            except (KeyError, TypeError, ValueError):
                raise RequestError('map must be {"projection": "pca", "xy": [u, v]}') from None
            return torch.as_tensor(self.latent_map(str(mp.get("projection", "pca"))).code_at(u, v), dtype=torch.float32)
        if req.get("code") is not None:
            return self._code(req["code"])
        return self.mean.clone()

    def full_code(self, req: dict, base: torch.Tensor) -> torch.Tensor:
        """base + Σ s_i·σ_i·v_i (sliders, in standard deviations), then per-layer style mixing:
        styles lo..hi taken from the code in mix.code. [d] or [L, d]"""
        w = base.clone()
        sl = req.get("sliders") or []
        if not isinstance(sl, list) or len(sl) > len(self.sigmas):
            raise RequestError(f"sliders must be a list of at most {len(self.sigmas)} numbers")
        for i, s in enumerate(sl):
            try:
                w = w + float(s) * self.sigmas[i] * self.dirs[i]
            except (TypeError, ValueError):
                raise RequestError("sliders must be numbers") from None
        mix = req.get("mix")
        if mix:
            L = self.model.style_layers
            if L <= 1:
                raise RequestError(f"this {self.model.name} model has one style input; style mixing needs a style "
                                   "generator (StyleALAE)")
            src = self._code(mix.get("code"), "mix.code")
            try:
                lo, hi = int(mix.get("lo", 0)), int(mix.get("hi", L - 1))
            except (TypeError, ValueError):
                raise RequestError("mix.lo and mix.hi must be whole numbers") from None
            if not 0 <= lo <= hi < L:
                raise RequestError(f"mix.lo and mix.hi must satisfy 0 <= lo <= hi < {L}; got {lo}, {hi}")
            ws = w[None].repeat(L, 1)
            ws[lo:hi + 1] = src
            w = ws
        return w

    def _options(self, req: dict) -> dict:
        opts = req.get("options") or {}
        if not isinstance(opts, dict):
            raise RequestError("options must be an object, as {\"psi\": 0.7}")
        return opts

    def _bends(self, req: dict):
        return parse_bends(req.get("bends") or [])

    def decode_images(self, codes: torch.Tensor, req: dict) -> torch.Tensor:
        opts, bends = self._options(req), self._bends(req)
        with self.lock, self.model.bend(*bends):
            return self.model.decode(codes, **opts)

    def decode(self, req: dict) -> dict:
        base = self.base_code(req)
        w = self.full_code(req, base)
        t0 = time.perf_counter()
        img = self.decode_images(w[None], req)[0]
        ms = 1e3 * (time.perf_counter() - t0)
        full = w.tolist() if w.dim() == 1 else base.tolist()
        return {"image": png_data_url(img), "code": base.tolist(), "full": full, "ms": round(ms, 2)}

    def samples(self, req: dict) -> dict:
        try:
            seed, n = int(req.get("seed", 0)), int(req.get("n", 8))
        except (TypeError, ValueError):
            raise RequestError("seed and n must be whole numbers") from None
        if not 1 <= n <= 64:
            raise RequestError(f"n must be between 1 and 64; got {n}")
        with self.lock:
            codes = self.model.sample_latents(n, seed)
        imgs = self.decode_images(codes, req)
        return {"seed": seed, "codes": codes.tolist(), "images": [png_data_url(i) for i in imgs]}

    def upload(self, data: bytes) -> dict:
        m = self.model
        x = torch.from_numpy(decode_upload(data, m.info.resolution, m.info.channels,
                                           m.meta.get("train", {}).get("fit", "crop")))[None]
        with self.lock:
            code = m.encode(x)
            rec = m.reconstruct(x)
        return {"image": png_data_url(x[0]), "reconstruction": png_data_url(rec[0]), "code": code[0].tolist()}

    def interpolate(self, req: dict) -> dict:
        a, b = self._code(req.get("a"), "a"), self._code(req.get("b"), "b")
        try:
            steps = int(req.get("steps", 12))
        except (TypeError, ValueError):
            raise RequestError("steps must be a whole number") from None
        if not 2 <= steps <= MAX_STEPS:
            raise RequestError(f"steps must be between 2 and {MAX_STEPS}; got {steps}")
        t = torch.linspace(0, 1, steps)[:, None]
        imgs = self.decode_images((1 - t) * a + t * b, req)  # [steps, C, H, W]
        frames = list(imgs)
        side = max(frames[0].shape[-2:])
        up = max(1, 128 // side)
        big = [f.repeat_interleave(up, -1).repeat_interleave(up, -2) for f in frames]
        return {"frames": [png_data_url(f) for f in frames], "gif": gif_data_url(big + big[-2:0:-1])}


# ---- the HTTP layer -----------------------------------------------------------------------------
def missing_web_extra() -> str | None:
    import importlib.util

    for mod in ("starlette", "uvicorn"):
        if importlib.util.find_spec(mod) is None:
            return f"calae explore needs the web extra ({mod} is not installed): pip install 'calae[web]'"
    return None


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def create_app(ex: Explorer):
    """The Starlette app serving the page and its JSON API for one Explorer."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    files = {name: _static(name) for name in STATIC}  # read once: no request ever reaches the disk
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

    def json_response(obj, status=200):
        return JSONResponse(obj, status_code=status, headers=headers)

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"the request is {int(declared):,} bytes; the limit is {limit:,} bytes", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"the request is over the limit of {limit:,} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> dict:
        body = await read_body(request, MAX_JSON)
        try:
            obj = json.loads(body or b"{}")
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise RequestError("the request body must be a JSON object")
        return obj

    def page(name):
        async def endpoint(request: Request):
            return Response(files[name], media_type=STATIC[name], headers=headers)
        return endpoint

    async def static(request: Request):
        name = request.path_params["name"]
        if name not in files:  # a fixed table: no path from a request is ever opened
            return json_response({"error": "not found"}, 404)
        return Response(files[name], media_type=STATIC[name], headers=headers)

    def api(work, body: str = "json"):
        async def endpoint(request: Request):
            try:
                if body == "json":
                    arg = await read_json(request)
                elif body == "bytes":
                    arg = await read_body(request, MAX_UPLOAD)
                else:
                    arg = dict(request.query_params)
                return json_response(await run_in_threadpool(work, arg))
            except RequestError as e:
                return json_response({"error": str(e)}, e.status)
            except (APIError, BendError, DataError) as e:
                return json_response({"error": str(e)}, 400)
        return endpoint

    async def not_found(request, exc):
        return json_response({"error": "not found" if exc.status_code == 404 else str(exc.detail)}, exc.status_code)

    async def no_icon(request: Request):
        return Response(status_code=204, headers=headers)

    routes = [
        Route("/", page("index.html")),
        Route("/favicon.ico", no_icon),
        Route("/static/{name}", static),
        Route("/api/info", api(lambda q: ex.info(), "query")),
        Route("/api/map", api(lambda q: ex.map(q.get("projection", "pca")), "query")),
        Route("/api/decode", api(ex.decode), methods=["POST"]),
        Route("/api/samples", api(ex.samples), methods=["POST"]),
        Route("/api/interpolate", api(ex.interpolate), methods=["POST"]),
        Route("/api/upload", api(ex.upload, "bytes"), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); warns when the host is not this machine
    only. OSError with a one-line reason when the port is taken or the address is not ours."""
    if host not in LOCAL_HOSTS:
        print(f"warning: serving on {host}, reachable from other machines; the explorer has no login. "
              "Use the default --host 127.0.0.1 unless you mean it.", file=sys.stderr, flush=True)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it the body of an answer waits for the client's
    # delayed ACK of its headers (Nagle), about 40 ms on every request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port (0 picks a free one)") \
            from None
    return sock


def serve(ex: Explorer, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Bind, print the URL, serve until interrupted."""
    import uvicorn

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"calae explore: {ex.model.name} model at http://{shown}:{sock.getsockname()[1]}/  (Ctrl-C stops)",
          flush=True)
    config = uvicorn.Config(create_app(ex), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
