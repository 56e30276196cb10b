"""The README's explorer and bending pictures, from a trained run (the demo's, `make demo`).

- ``docs/img/explore.png``: a screenshot of ``calae explore RUN`` (the real command, on a free port
  of 127.0.0.1) in Debian's headless Chromium driven by Playwright, after hovering the map, moving
  the first principal-direction slider and adding a bend;
- ``docs/img/bend.png``: rows of the same 8 samples, unbent and then through the bends in ``ROWS``
  (``calae.api`` + ``calae.bending``);
- ``docs/img/bend-rotate.gif``: ``calae bend RUN --animate angle=0:360`` on 4 samples.

    python -m benchmarks.explore_pictures RUN [--out docs/img]

Prints each file it writes and, as JSON on the last line, the bends of each row.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def rows_for(layer_names: list[str], big: int) -> list[tuple[str, list[dict]]]:
    """(caption, bends) per row of bend.png, on the decoder's first three blocks; ``big`` is the
    largest of the second block's 5 channel clusters."""
    l0, l1, l2 = (layer_names + layer_names[-1:] * 3)[:3]
    return [
        ("unbent", []),
        (f"rotate:90 after {l1}", [{"layer": l1, "transform": "rotate:90"}]),
        (f"flip-h after {l0}, dilate:3 after {l2}", [{"layer": l0, "transform": "flip-h"},
                                                    {"layer": l2, "transform": "dilate:3"}]),
        (f"ablate cluster {big} of 5 (the largest) after {l1}",
         [{"layer": l1, "transform": "ablate", "channels": f"cluster:{big}"}]),
        (f"multiply:3 on a random half of {l2}", [{"layer": l2, "transform": "multiply:3", "channels": "random:0.5"}]),
        (f"translate:0.25,0 then scale:1.5 after {l1}", [{"layer": l1, "transform": "translate:0.25,0"},
                                                        {"layer": l1, "transform": "scale:1.5"}]),
    ]


def bend_picture(run: str, out: Path) -> list:
    import torch

    import calae.api as ca
    from calae.bending import clusters, layers, parse_bends
    from calae.viz.grid import make_grid, save_image

    m = ca.load(run)
    names = list(layers(m))
    codes = m.sample_latents(8, seed=3)
    opts = m.display_options()
    rows, spec = [], []
    labels = clusters(m, names[1], 5)
    big = max(range(5), key=labels.count)
    for caption, bends in rows_for(names, big):
        with m.bend(*parse_bends(bends)):
            rows.append(m.decode(codes, **opts))
        spec.append({"row": caption, "bends": bends})
    save_image(make_grid(torch.cat(rows), nrow=8), out, upscale=max(1, 96 // m.info.resolution))
    return spec


def screenshot(run: str, out: Path, width: int = 1280, height: int = 900) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed: apt-get install chromium")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "calae", "explore", run, "--port", "0", "--n", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        url, deadline = None, time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            m = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
            if m:
                url = m.group(0)
                break
        if url is None:
            raise SystemExit("calae explore printed no URL")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.path.realpath(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            box = page.query_selector("#map").bounding_box()
            page.mouse.click(box["x"] + 0.62 * box["width"], box["y"] + 0.4 * box["height"])
            page.wait_for_timeout(500)
            page.focus("#slider-0")
            for _ in range(8):
                page.keyboard.press("ArrowRight")
            page.wait_for_timeout(500)
            page.click("#add-bend")
            page.select_option("#bend-0 .bend-transform", "flip-h")
            page.wait_for_timeout(500)
            page.click("#samples img:nth-child(1)")
            page.wait_for_timeout(300)
            page.click("#set-a")
            page.click("#samples img:nth-child(5)")
            page.wait_for_timeout(300)
            page.click("#set-b")
            page.fill("#steps", "8")
            page.click("#interpolate")
            page.wait_for_function("() => document.querySelectorAll('#frames img').length == 8", timeout=60_000)
            page.mouse.move(box["x"] + 0.45 * box["width"], box["y"] + 0.45 * box["height"])  # hover: decoded live
            page.wait_for_timeout(800)
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run folder or snapshot (e.g. demo/run after `make demo`)")
    p.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder for the pictures (default docs/img)")
    p.add_argument("--skip-screenshot", action="store_true", help="bending pictures only (no Chromium)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = bend_picture(a.run, out / "bend.png")
    print(out / "bend.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import calae.api as ca
    from calae.bending import layers

    l1 = list(layers(ca.load(a.run)))[1]
    subprocess.run([sys.executable, "-m", "calae", "bend", a.run, "--layer", l1, "--transform", "rotate",
                    "--animate", "angle=0:360", "--frames", "24", "--n", "4", "--seed", "3",
                    "--out", str(out / "bend-rotate.gif")], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(out / "bend-rotate.gif")
    if not a.skip_screenshot:
        screenshot(a.run, out / "explore.png")
        print(out / "explore.png")
    print(json.dumps(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
