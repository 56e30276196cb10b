"""`calae explore` in a real browser: Debian's headless Chromium driven by Playwright against the
real command (a subprocess serving a tiny trained VAE on a free port). The page loads, hovering and
clicking the map and moving a slider change the decoded image (pixel difference), an upload is
encoded and reconstructed, a non-image upload shows the error and the server keeps serving, bends
apply live; requests that try to name a file get 404."""
import base64
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from calae.config import TrainConfig
from calae.training import Trainer

from conftest import ROOT, tiny_model_cfg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytest.importorskip("starlette", reason="the web extra is not installed: pip install 'calae[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'calae[web]'")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "vae"
    cfg = TrainConfig(method="vae", data="digits", resolution=16, kimg=0.032, batch_size=16, precision="fp32",
                      sample_every_kimg=100, snapshot_every_kimg=100)
    Trainer(cfg, tiny_model_cfg("vae"), out, progress=False, pictures=False).run()
    return out


@pytest.fixture(scope="module")
def server(run_dir, cli_env):
    """`calae explore RUN --port 0`: the URL it prints, while it runs."""
    proc = subprocess.Popen([sys.executable, "-m", "calae", "explore", str(run_dir), "--port", "0", "--n", "150"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env, cwd=ROOT)
    try:
        line = ""
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "http://" in line or proc.poll() is not None:
                break
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield {"url": m.group(0), "port": int(m.group(1)), "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def get(server, path, method="GET", body=None):
    """A raw request (the path sent as it is, not normalised): (status, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode(errors="replace")


# ---- without a browser -------------------------------------------------------------------------
def test_no_request_can_name_a_file(server):
    for path in ["/static/../server.py", "/static/..%2Fserver.py", "/static/%2e%2e/%2e%2e/api.py", "/../../etc/passwd",
                 "/static/", "/static/app.js/../index.html", "/static/..\\server.py", "//etc/passwd", "/api/../api.py"]:
        status, _ = get(server, path)
        assert status in (400, 404), (path, status)
    status, js = get(server, "/static/app.js")
    assert status == 200 and "fetch(" in js


def test_uploads_are_limited_and_checked(server):
    status, r = get(server, "/api/upload", "POST", b"x" * (8 * 1024 * 1024 + 1))
    assert status == 413 and "limit" in r["error"]
    status, r = get(server, "/api/upload", "POST", b"GIF89a but not really")
    assert status == 400 and "not a readable image" in r["error"]
    status, r = get(server, "/api/decode", "POST", b"{not json")
    assert status == 400 and "not valid JSON" in r["error"]
    status, r = get(server, "/api/decode", "POST", json.dumps({"code": [1, 2]}).encode())
    assert status == 400 and "8 finite numbers" in r["error"]
    status, r = get(server, "/api/decode", "POST", json.dumps({"bends": [{"layer": "x", "transform": "ablate"}]}).encode())
    assert status == 400 and "no feature-map layer 'x'" in r["error"]
    status, info = get(server, "/api/info")  # still serving
    assert status == 200 and info["name"] == "vae" and info["n_points"] == 150


def test_answers_on_a_kept_alive_connection_are_not_held_back(server):
    """Nagle's algorithm against the client's delayed ACK holds each answer's body ~40 ms; the
    listening socket sets TCP_NODELAY so a cheap request answers in a few milliseconds."""
    c = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    ms = []
    for _ in range(12):
        t0 = time.perf_counter()
        c.request("GET", "/api/info")
        assert c.getresponse().read()
        ms.append(1e3 * (time.perf_counter() - t0))
    c.close()
    assert sorted(ms)[len(ms) // 2] < 30, ms


def test_the_server_binds_this_machine_only_unless_told(capsys):
    from calae.web.server import bind

    sock = bind("127.0.0.1", 0)
    assert sock.getsockname()[0] == "127.0.0.1"
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # no Nagle wait on answers
    sock.close()
    assert capsys.readouterr().err == ""
    sock = bind("0.0.0.0", 0)
    sock.close()
    assert "warning: serving on 0.0.0.0, reachable from other machines" in capsys.readouterr().err


def test_a_missing_web_extra_is_one_line(monkeypatch, run_dir, capsys):
    import importlib.util

    from calae import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert cli.main(["explore", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'calae[web]'" in err


# ---- in Chromium --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.path.realpath(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server["url"])
        pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
        pg.errors = errors
        yield pg
        browser.close()


def pixels(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def view(page) -> str:
    return page.get_attribute("#view", "src") or ""


def changed(page, before: str, timeout_ms: int = 20_000) -> np.ndarray:
    """Wait until the decoded image differs from `before`; the absolute pixel difference."""
    page.wait_for_function("b => { const s = document.getElementById('view').getAttribute('src'); "
                           "return s && s !== b; }", arg=before, timeout=timeout_ms)
    page.wait_for_timeout(300)  # let a queued request land
    diff = np.abs(pixels(view(page)) - pixels(before))
    return diff


def settled(page):
    page.wait_for_function("() => document.getElementById('view').getAttribute('src')", timeout=20_000)
    page.wait_for_timeout(400)
    return view(page)


def test_the_page_loads_and_draws_the_map(page):
    assert "vae" in page.inner_text("#model-name")
    assert page.eval_on_selector("#projection", "s => [...s.options].map(o => o.value)")[:1] == ["pca"]
    assert len(page.query_selector_all("#samples img")) == 8
    assert pixels(settled(page)).shape == (16, 16, 3)
    assert not page.errors


def canvas(page) -> np.ndarray:
    return pixels(page.eval_on_selector("#map", "c => c.toDataURL('image/png')"))


def test_the_map_is_coloured_by_the_chosen_key(page):
    keys = page.eval_on_selector("#colour-by", "s => [...s.options].map(o => o.value)")
    assert keys == ["none", "label"] and page.input_value("#colour-by") == "label"  # digits carry labels
    by_label = canvas(page)
    page.select_option("#colour-by", "none")
    plain = canvas(page)
    page.select_option("#colour-by", "label")
    assert np.abs(canvas(page) - by_label).max() == 0
    diff = np.abs(by_label - plain).max(axis=2) > 0
    assert diff.sum() > 100  # the points changed colour
    palette = {(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)}  # app.js's category colours
    shown = lambda img: {c for c in map(tuple, img.reshape(-1, 3).tolist()) if c in palette}  # noqa: E731
    assert shown(plain) == {(31, 119, 180)} and len(shown(by_label)) >= 5  # one colour per digit class


def test_hover_and_click_on_the_map_decode_live(page):
    box = page.query_selector("#map").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    start = settled(page)
    page.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] - 20)  # hover, far corner
    assert changed(page, start).max() > 0
    hovered = settled(page)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 25)  # click: picks that point
    assert changed(page, hovered).max() > 0
    picked = settled(page)
    page.mouse.move(box["x"] + box["width"] + 200, box["y"])  # leaving the map keeps the picked point
    page.wait_for_timeout(500)
    assert np.abs(pixels(view(page)) - pixels(picked)).max() == 0


def test_a_slider_changes_the_image(page):
    before = settled(page)
    page.focus("#slider-0")
    page.keyboard.press("End")  # +3σ along the first principal direction
    assert page.input_value("#slider-0") == "3"
    assert changed(page, before).mean() > 0.5
    page.click("#reset-sliders")
    page.wait_for_timeout(500)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_encodes_and_reconstructs(page):
    before = settled(page)
    img = np.zeros((40, 40), np.uint8)
    img[8:32, 15:25] = 255  # a "1", larger than the model's 16 px: it is resized (10 px wide, so one resized column stays full)
    page.set_input_files("#upload", files=[{"name": "one.png", "mimeType": "image/png", "buffer": png_bytes(img)}])
    page.wait_for_function("() => document.querySelectorAll('#upload-result img').length == 2", timeout=20_000)
    assert page.is_hidden("#error")
    shown = page.get_attribute("#upload-result img", "src")
    assert pixels(shown)[:, :, 0].max() == 255  # the uploaded image, at 16 px
    assert changed(page, before).max() > 0  # and its code is decoded in the view


def test_a_bad_upload_shows_the_error_and_the_server_keeps_serving(page, server):
    page.set_input_files("#upload", files=[{"name": "evil.png", "mimeType": "image/png", "buffer": b"#!/bin/sh\nrm -rf /\n"}])
    page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    assert "not a readable image" in page.inner_text("#error")
    before = settled(page)
    page.focus("#slider-1")
    page.keyboard.press("Home")  # the page still decodes
    assert changed(page, before).max() > 0
    assert server["proc"].poll() is None
    with urllib.request.urlopen(server["url"] + "api/info", timeout=10) as r:
        assert r.status == 200


def test_bending_applies_live(page):
    before = settled(page)
    page.click("#add-bend")  # default: rotate 90 on a decoder layer
    assert changed(page, before).max() > 0
    page.select_option("#bend-0 .bend-transform", "ablate")
    page.wait_for_timeout(800)
    ablated = settled(page)
    page.uncheck("#bend-0 input[type=checkbox]")  # off: the unbent image again
    page.wait_for_timeout(800)
    assert np.abs(pixels(settled(page)) - pixels(before)).max() == 0
    assert np.abs(pixels(ablated) - pixels(before)).max() > 0


def test_interpolation_gives_frames_and_a_gif(page):
    page.click("#samples img:nth-child(1)")
    page.wait_for_timeout(500)
    page.click("#set-a")
    page.click("#samples img:nth-child(2)")
    page.wait_for_timeout(500)
    page.click("#set-b")
    page.fill("#steps", "5")
    page.click("#interpolate")
    page.wait_for_function("() => document.querySelectorAll('#frames img').length == 5", timeout=20_000)
    href = page.get_attribute("#gif-download", "href")
    gif = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))
    assert gif.format == "GIF" and gif.n_frames == 8  # 5 steps, ping-pong
    first, last = (pixels(page.get_attribute(f"#frames img:nth-child({i})", "src")) for i in (1, 5))
    assert np.abs(first - last).max() > 0
    assert not page.errors
