"""`calae explore` of a style model (a tiny StyleALAE) in headless Chromium: the truncation ψ
slider and the per-layer style panel change the decoded image; all styles from a source image
give exactly that image."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from calae.config import TrainConfig
from calae.training import Trainer

from conftest import ROOT, tiny_model_cfg
from test_explore_web import ARGS, CHROMIUM, changed, pixels, settled, view

pytest.importorskip("starlette", reason="the web extra is not installed: pip install 'calae[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install 'calae[web]'")


@pytest.fixture(scope="module")
def page(tmp_path_factory, cli_env):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    run = tmp_path_factory.mktemp("explore_style") / "alae"
    cfg = TrainConfig(method="alae", data="fractals", resolution=16, kimg=0.032, batch_size=16, precision="fp32",
                      sample_every_kimg=100, snapshot_every_kimg=100, n_data=64)
    Trainer(cfg, tiny_model_cfg("alae"), run, progress=False, pictures=False).run()
    proc = subprocess.Popen([sys.executable, "-m", "calae", "explore", str(run), "--port", "0", "--data", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env, cwd=ROOT)
    try:
        line, deadline = "", time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if "http://" in line:
                break
        m = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert m, f"no URL printed: {line!r}"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.path.realpath(CHROMIUM), args=ARGS)
            pg = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(m.group(0))
            pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
            pg.errors = errors
            yield pg
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def set_range(page, selector, value):
    page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(value))


def test_truncation_psi_changes_the_image(page):
    assert "alae" in page.inner_text("#model-name")
    assert page.get_attribute("#option-psi", "type") == "range"
    page.click("#samples img:nth-child(3)")
    before = settled(page)
    set_range(page, "#option-psi", 0)  # ψ = 0: the mean w, whatever the code
    assert changed(page, before).max() > 0
    at_mean = view(page)
    page.click("#samples img:nth-child(4)")  # another code, still ψ = 0: the same image
    page.wait_for_timeout(800)
    assert np.abs(pixels(settled(page)) - pixels(at_mean)).max() == 0
    set_range(page, "#option-psi", 1)
    assert changed(page, at_mean).max() > 0
    assert not page.errors


def test_styles_taken_from_a_source_image(page):
    assert page.is_visible("#mix-panel")
    L = int(page.get_attribute("#mix-hi", "max")) + 1
    assert L > 1
    page.click("#samples img:nth-child(2)")
    source = settled(page)
    page.click("#set-mix")  # the current image becomes the style source
    assert page.get_attribute("#mix-source", "src") == source
    page.click("#samples img:nth-child(5)")
    own = settled(page)
    assert np.abs(pixels(own) - pixels(source)).max() > 0
    set_range(page, "#mix-lo", 0)
    set_range(page, "#mix-hi", L - 1)
    assert page.inner_text("#mix-range-label") == f"0–{L - 1}"
    page.check("#mix-on")  # styles 0..L-1 from the source: exactly the source image
    changed(page, own)
    page.wait_for_timeout(500)
    assert np.abs(pixels(settled(page)) - pixels(source)).max() == 0
    page.uncheck("#mix-on")
    page.wait_for_timeout(800)
    assert np.abs(pixels(settled(page)) - pixels(own)).max() == 0
    assert not page.errors
