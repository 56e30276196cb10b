"""Video in and out (calae[video], PyAV): the video:PATH data source, MP4 writing, fractal sweeps.

Every video here is written by the test itself with PyAV, a few dozen tiny frames.
"""
import json
import os
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from calae.data import DataError, open_dataset  # noqa: E402
from calae.data.video import BadVideoWarning, VideoFrames, parse_video_spec  # noqa: E402
from calae.viz.video import fractal_sweep, parse_sweep, save_video  # noqa: E402

TINY = ["--set", "z_dim=4", "--set", "base_channels=8", "--set", "max_channels=16", "--no-progress",
        "--precision", "fp32"]


def write_video(path, n=30, w=32, h=32, fps=30, codec="libx264", pts=None, content=None):
    """Frame i is flat grey 8*i (top half) over a fixed ramp (bottom half): brightness tells the frame."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "0", "preset": "ultrafast"}
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            if content is not None:
                a = content(i)
            else:
                a = np.zeros((h, w, 3), np.uint8)
                a[: h // 2] = min(255, 8 * i)
                a[h // 2:] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def read_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4")


def _open(path, **kw):
    kw.setdefault("cache", "none")
    kw.setdefault("resolution", 16)
    return VideoFrames(path, **kw)


# ---- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("every, expect", [(1, 30), (4, 8), (7, 5), (None, 3)])  # None: auto = fps / 3 = 10
def test_every_kth_frame(clip, every, expect):
    ds = _open(clip, every=every)
    assert len(ds) == expect
    b = ds.get(range(len(ds)))
    k = every or 10
    assert b.params[:, 0].tolist() == pytest.approx([i * k / 30 for i in range(expect)], abs=1e-3)
    # the top half's grey level is 8 * frame number: the kept frames are frames 0, k, 2k, ...
    top = b.x[:, :, :6].float().mean(dim=(1, 2, 3))
    assert top.tolist() == pytest.approx([min(255, 8 * i * k) for i in range(expect)], abs=3)


def test_start_end_times(clip):
    ds = _open(clip, every=2, start=0.5, end=0.8)  # frames 15..23 (t < 0.8), every 2nd: 15 17 19 21 23
    t = ds.get(range(len(ds))).params[:, 0]
    assert t.tolist() == pytest.approx([15 / 30, 17 / 30, 19 / 30, 21 / 30, 23 / 30], abs=1e-3)
    with pytest.raises(DataError, match="no frames between 5 s and 6 s"):
        _open(clip, start=5, end=6)


def test_deterministic_and_limited(clip):
    a, b = _open(clip, every=3), _open(clip, every=3)
    assert torch.equal(a.get(range(len(a))).x, b.get(range(len(b))).x)
    assert len(_open(clip, every=1, limit=7)) == 7


def test_random_crops(tmp_path):
    ramp = lambda i: np.broadcast_to(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 96, 3)).copy()
    path = write_video(tmp_path / "wide.mp4", n=12, w=96, h=64, content=ramp)
    ds = _open(path, every=4, crops=5, crop=24, seed=1)
    assert len(ds) == 3 * 5 and ds.info.shape == (3, 16, 16)
    x = ds.get(range(len(ds))).x.float()
    # crops of a horizontal ramp: their mean brightness tells where they were cut; they differ
    means = x.mean(dim=(1, 2, 3))
    assert len({round(v) for v in means.tolist()}) >= 8
    assert torch.equal(ds.get(range(15)).x, _open(path, every=4, crops=5, crop=24, seed=1).get(range(15)).x)
    assert not torch.equal(ds.get(range(15)).x, _open(path, every=4, crops=5, crop=24, seed=2).get(range(15)).x)
    assert len(_open(path, every=4, crops=2)) == 6  # crops alone: half the short side
    with pytest.raises(DataError, match="crop=80 is larger than the frame"):
        _open(path, crop=80)


def test_fit_like_folders(tmp_path):
    white = lambda i: np.full((32, 64, 3), 255, np.uint8)
    path = write_video(tmp_path / "wide.mp4", n=3, w=64, h=32, content=white)
    pad = _open(path, every=1, fit="pad").get([0]).x[0].float()
    assert pad[:, :3].mean() < 5 and pad[:, 6:10].mean() > 250  # letterboxed in black
    assert _open(path, every=1, fit="crop").get([0]).x.float().min() > 250
    gray = _open(path, every=1, channels=1)
    assert gray.info.shape == (1, 16, 16)


def test_fast_scaling_matches_pillow(tmp_path):
    rng = np.random.default_rng(0)
    blobs = lambda i: np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    path = write_video(tmp_path / "sq.mp4", n=4, w=64, h=64, content=blobs)
    for c in (3, 1):
        fast = _open(path, every=1, channels=c).get(range(4)).x.float()  # square, shrinking: FFmpeg area
        pil = _open(path, every=1, channels=c, crops=1, crop=64).get(range(4)).x.float()  # Pillow Lanczos
        assert (fast - pil).abs().mean() < 10 and abs(fast.mean() - pil.mean()) < 3  # a shift or flip: > 50


def test_folder_of_videos_and_spec(tmp_path):
    d = tmp_path / "vids"
    (d / "sub").mkdir(parents=True)
    write_video(d / "b.mp4", n=10)
    write_video(d / "sub" / "a.webm", n=6, codec="libvpx-vp9")
    (d / "notes.txt").write_text("not a video")
    ds = open_dataset(f"video:{d}?every=2,cache=none", resolution=16)
    assert len(ds) == 5 + 3 and [p.name for p in ds.files] == ["b.mp4", "a.webm"]
    assert ds.get([0, 5]).params[:, 1].tolist() == [0, 1]  # file number
    assert parse_video_spec("x.mp4?every=auto,start=1.5,crops=3") == ("x.mp4", {"start": 1.5, "crops": 3})
    for bad, msg in (("x.mp4?every=0", "every must be"), ("x.mp4?speed=2", "not one of"),
                     ("x.mp4?start=3,end=2", "must be after"), ("", "video needs a file")):
        with pytest.raises(DataError, match=msg):
            parse_video_spec(bad)


def test_cache_keyed_by_file_and_options(clip, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a = VideoFrames(clip, resolution=16, every=3, cache_dir=cache)
    assert len(list(cache.glob("*.u8"))) == 1 and a.cache_files[0].exists()

    def no_decode(*args, **kw):
        raise AssertionError("decoded although the cache holds these frames")

    monkeypatch.setattr(VideoFrames, "_decode", no_decode)
    b = VideoFrames(clip, resolution=16, every=3, cache_dir=cache)
    assert torch.equal(a.get(range(len(a))).x, b.get(range(len(b))).x)
    assert torch.equal(a.get(range(len(a))).params, b.get(range(len(b))).params)
    monkeypatch.undo()
    VideoFrames(clip, resolution=16, every=5, cache_dir=cache)  # other options: another cache file
    write_video(clip, n=12)  # the same path, new content: decoded again
    os.utime(clip, ns=(1, 1))
    c = VideoFrames(clip, resolution=16, every=3, cache_dir=cache)
    assert len(c) == 4 and len(list(cache.glob("*.u8"))) == 3


def test_over_memory_budget_serves_from_the_cache_file(clip, tmp_path):
    ds = VideoFrames(clip, resolution=16, every=1, cache_dir=tmp_path / "c", cache_bytes=1000)
    assert not ds.cached and len(ds) == 30
    full = VideoFrames(clip, resolution=16, every=1, cache="none")
    idx = torch.tensor([29, 0, 7, 7])
    assert torch.equal(ds.get(idx).x, full.get(idx).x)
    with pytest.raises(DataError, match="memory budget"):
        VideoFrames(clip, resolution=16, every=1, cache="memory", cache_bytes=1000)


# ---- bad input ------------------------------------------------------------------------------------
def _bad_files(tmp_path, clip):
    data = clip.read_bytes()
    (tmp_path / "text.mp4").write_text("hello, not a video")
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(tmp_path / "zero.avi"), "w") as out:
        s = out.add_stream("mpeg4", rate=30)
        s.width = s.height = 32
        out.start_encoding()
    return {"text.mp4": "not a readable video", "trunc.mp4": "not a readable video",
            "zero.avi": "zero decodable frames"}


def test_bad_single_files_are_one_line_errors(tmp_path, clip):
    for name, why in _bad_files(tmp_path, clip).items():
        with pytest.raises(DataError) as e:
            _open(tmp_path / name)
        assert name in str(e.value) and why in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        _open(tmp_path / "missing.mp4")


def test_bad_files_in_a_folder_are_warnings(tmp_path, clip):
    d = tmp_path / "d"
    d.mkdir()
    expected = _bad_files(d, clip)
    write_video(d / "good.mp4", n=9)
    with pytest.warns(BadVideoWarning) as rec:
        ds = _open(d, every=1)
    assert len(ds) == 9 and [p.name for p in ds.files] == ["good.mp4"]
    msgs = [str(w.message) for w in rec]
    for name in expected:
        assert sum(name in m for m in msgs) == 1, msgs
    (d / "good.mp4").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 3 video files"):
            _open(d)


def test_corrupt_middle_keeps_the_frames_before_it(tmp_path):
    # a Matroska file cut mid-stream (its index is at the front): frames before the cut decode
    path = write_video(tmp_path / "long.mkv", n=60, w=64, h=64,
                       content=lambda i: np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = _open(cut, every=1)
    assert 10 <= len(ds) < 60
    # either FFmpeg reports the broken tail (warned, naming the file) or it ends the stream there quietly
    assert all("cut.mkv" in str(w.message) for w in rec if issubclass(w.category, BadVideoWarning))


def test_variable_frame_rate_is_warned(tmp_path):
    pts = np.cumsum([0] + [33 if i % 2 else 100 for i in range(19)]).tolist()
    path = write_video(tmp_path / "vfr.mp4", n=20, pts=pts)
    with pytest.warns(BadVideoWarning, match="vfr.mp4: has a variable frame rate"):
        ds = _open(path, every=1)
    assert len(ds) == 20
    assert ds.get(range(20)).params[:, 0].tolist() == pytest.approx([p / 1000 for p in pts], abs=2e-3)


def test_long_files_show_progress(clip, monkeypatch, capsys):
    import calae.data.video as V

    monkeypatch.setattr(V, "_PROGRESS_FRAMES", 10)  # a 30-frame clip counts as long
    assert len(_open(clip, every=1)) == 30
    assert "decoding clip.mp4" in capsys.readouterr().err
    monkeypatch.setattr(V, "_PROGRESS_FRAMES", 100)
    _open(clip, every=1)
    assert "decoding" not in capsys.readouterr().err


def test_missing_pyav_names_the_extra(clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(DataError, match=r"pip install 'calae\[video\]'"):
        _open(clip)


# ---- writing ----------------------------------------------------------------------------------------
def test_save_video_round_trip(tmp_path):
    frames = [torch.full((1, 15, 21), 10 * i, dtype=torch.uint8) for i in range(12)]  # gray, odd sides
    out = save_video(frames, tmp_path / "g.mp4", fps=12, upscale=2)
    back = read_frames(out)
    assert len(back) == 12 and back[0].shape == (30, 42, 3)
    assert [int(round(f.mean())) for f in back] == pytest.approx([10 * i for i in range(12)], abs=3)
    assert not list(tmp_path.glob(".*tmp*"))
    assert len(read_frames(save_video(frames, tmp_path / "g.webm"))) == 12


def test_fractal_sweep_moves_only_the_swept_parameter():
    from calae.data.fractals import PARAM_NAMES, FractalDataset

    ds = FractalDataset("julia", n=4, resolution=32, seed=5, memory_cache=False)
    first = ds.get([2])
    j = PARAM_NAMES.index("c_re")
    c0 = float(first.params[0, j])
    x, P = fractal_sweep([("c_re", c0, c0 + 0.05)], 6, seed=5, index=2, family="julia", resolution=32)
    assert torch.equal(x[0], first.x[0])  # the sweep starts at the dataset's own image
    others = np.delete(P, j, axis=1)
    assert (others == others[0]).all() and np.diff(P[:, j]).min() > 0
    assert torch.equal(x, fractal_sweep([("c_re", c0, c0 + 0.05)], 6, seed=5, index=2, family="julia",
                                        resolution=32)[0])
    d = (x[1:].float() - x[:-1].float()).abs().mean(dim=(1, 2, 3))
    assert d.max() < 40 and d.min() > 0  # smooth: consecutive frames are close but not equal
    with pytest.raises(DataError, match="not a continuous"):
        parse_sweep("power=2:3")
    with pytest.raises(DataError, match="PARAM=A:B"):
        parse_sweep("c_re=0")


# ---- the round trip of the issue: sweep video -> train on it -> interpolation MP4 ------------------
def _cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "calae", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_round_trip_sweep_train_interpolate(tmp_path, cli_env):
    env = dict(cli_env, CALAE_CACHE_DIR=str(tmp_path / "cache"))
    video = tmp_path / "sweep.mp4"
    p = _cli(["fractals", "--video", str(video), "--sweep", "c_re=-0.8:-0.7", "--sweep", "c_im=0.15:0.2",
              "--frames", "48", "--family", "julia", "--resolution", "32", "--seed", "3"], env)
    assert p.returncode == 0, p.stderr
    assert len(read_frames(video)) == 48 and json.loads(video.with_suffix(".json").read_text())["seed"] == 3
    run = tmp_path / "run"
    p = _cli(["train", "vae", "--data", f"video:{video}?every=2", "--resolution", "16", "--kimg", "0.064",
              "--batch-size", "16", "--out", str(run), *TINY], env)
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "config.json").read_text())["train"]["data"] == f"video:{video}?every=2"
    stats = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert any("data_wait" in s for s in stats)
    assert list((tmp_path / "cache" / "video").glob("sweep-16px-*.u8"))
    if (run / "progress.gif").exists():  # the training-progress movie comes as MP4 too
        assert len(read_frames(run / "progress.mp4")) >= 1
    movie = tmp_path / "walk.mp4"
    p = _cli(["interpolate", str(run), "--out", str(movie), "--steps", "5", "--pairs", "2"], env)
    assert p.returncode == 0, p.stderr
    frames = read_frames(movie)
    assert len(frames) == 2 * 5 - 2 and frames[0].std() > 1 and movie.with_suffix(".png").exists()
    p = _cli(["bend", str(run), "--list-layers"], env)
    assert p.returncode == 0, p.stderr
    layer = p.stdout.split()[0]
    p = _cli(["bend", str(run), "--layer", layer, "--transform", "rotate:0", "--animate", "angle=0:90",
              "--frames", "4", "--n", "4", "--out", str(tmp_path / "bend.mp4")], env)
    assert p.returncode == 0, p.stderr
    assert len(read_frames(tmp_path / "bend.mp4")) == 4


def test_cli_errors_are_one_line(tmp_path, cli_env):
    (tmp_path / "x.mp4").write_text("nope")
    for args, msg in (
        (["train", "vae", "--data", f"video:{tmp_path / 'x.mp4'}", "--out", str(tmp_path / "r")], "not a readable video"),
        (["train", "vae", "--data", "video:nowhere.mp4", "--out", str(tmp_path / "r")], "does not exist"),
        (["train", "vae", "--data", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "r")], "--data video:"),
        (["fractals", "--video", str(tmp_path / "v.mp4")], "--sweep"),
        (["fractals", "--video", str(tmp_path / "v.gif"), "--sweep", "c_re=0:1"], "ending in .mp4"),
    ):
        p = _cli(args, cli_env)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
