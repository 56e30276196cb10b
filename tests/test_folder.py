"""ImageFolder: formats, modes, geometry, bad files and errors (all images tiny, made here)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from calae.data.base import DataError
from calae.data.folder import BadImageWarning, ImageFolder, scan_images


def _solid(mode, size, color):
    return Image.new(mode, size, color)


def _noise(size=(48, 40), seed=0):
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def _bad_messages(rec):
    return [str(w.message) for w in rec if issubclass(w.category, BadImageWarning)]


@pytest.fixture
def mixed(tmp_path):
    """Nested folders with every supported extension (one upper-case) and a non-image file."""
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    _solid("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "a" / "1.png")
    _solid("RGB", (20, 20), (0, 255, 0)).save(tmp_path / "a" / "2.JPG", quality=95)
    _solid("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "b" / "3.webp", lossless=True)
    _solid("RGB", (20, 20), (255, 255, 0)).save(tmp_path / "b" / "deep" / "4.bmp")
    _solid("RGB", (20, 20), (0, 255, 255)).save(tmp_path / "b" / "deep" / "5.jpeg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_text("hidden files are ignored")
    return tmp_path


def test_mixed_formats_nested_sorted(mixed):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)
        ds = ImageFolder(mixed, resolution=8, channels=3)
    names = [p.relative_to(mixed).as_posix() for p in ds.files]
    assert names == ["a/1.png", "a/2.JPG", "b/3.webp", "b/deep/4.bmp", "b/deep/5.jpeg"]
    assert len(ds) == 5 and ds.cached
    b = ds.get([0, 1, 2, 3, 4])
    assert b.x.dtype == torch.uint8 and b.x.shape == (5, 3, 8, 8) and b.y is None
    means = b.x.float().mean(dim=(2, 3))
    expected = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]]).float()
    assert torch.allclose(means, expected, atol=4)
    assert ds.info.kind == "image" and ds.info.num_classes == 0
    assert ds.info.name == f"folder:{mixed.name}" and ds.info.shape == (3, 8, 8)
    assert ds[4].x.shape == (1, 3, 8, 8)


def test_limit_takes_first_files(mixed):
    ds = ImageFolder(mixed, resolution=8, channels=1, limit=2)
    assert [p.name for p in ds.files] == ["1.png", "2.JPG"]
    assert ds.get([0, 1]).x.shape == (2, 1, 8, 8)


def test_streaming_matches_cache(mixed):
    cached = ImageFolder(mixed, resolution=8, channels=3, cache=True)
    stream = ImageFolder(mixed, resolution=8, channels=3, cache=False)
    assert cached.cached and not stream.cached
    idx = [4, 0, 2, 2, -1]
    assert torch.equal(cached.get(idx).x, stream.get(idx).x)


def test_modes_convert_to_1_and_3_channels(tmp_path):
    _solid("L", (8, 8), 100).save(tmp_path / "a_gray.png")
    _solid("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "b_red.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # left half opaque green, right half transparent
    rgba.paste((0, 255, 0, 255), (0, 0, 4, 8))
    rgba.save(tmp_path / "c_rgba.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    pal.paste(0, (0, 0, 4, 8))  # index 0 (white) is transparent
    pal.save(tmp_path / "d_pal.png", transparency=0)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "e_16bit.png")
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "f_16bit_mid.png")
    la = Image.new("LA", (8, 8), (200, 0))
    la.save(tmp_path / "g_la.png")
    _solid("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "h_cmyk.jpg", quality=95)
    with Image.open(tmp_path / "e_16bit.png") as im16:
        assert im16.mode.startswith("I")

    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)
        rgb = ImageFolder(tmp_path, resolution=8, channels=3, fit="stretch")
        gray = ImageFolder(tmp_path, resolution=8, channels=1, fit="stretch")
    assert len(rgb) == len(gray) == 8
    x3, x1 = rgb.get(range(8)).x.int(), gray.get(range(8)).x.int()
    assert x3.shape == (8, 3, 8, 8) and x1.shape == (8, 1, 8, 8)
    px = lambda x, i, col: x[i, :, 4, col].tolist()  # noqa: E731
    assert px(x3, 0, 0) == [100, 100, 100] and px(x1, 0, 0) == [100]
    assert px(x3, 1, 0) == [255, 0, 0] and px(x1, 1, 0) == [76]  # ITU-R 601 luma of red
    # alpha composited over black
    assert px(x3, 2, 1) == [0, 255, 0] and px(x3, 2, 6) == [0, 0, 0] and px(x1, 2, 6) == [0]
    assert px(x3, 3, 1) == [0, 0, 0] and px(x3, 3, 6) == [0, 0, 255]
    # 16-bit greyscale scaled to 8 bits
    assert px(x3, 4, 3) == [255, 255, 255] and px(x1, 4, 3) == [255]
    assert px(x1, 5, 3) == [128]
    assert px(x3, 6, 3) == [0, 0, 0]  # LA fully transparent -> background
    r, g, b = px(x3, 7, 3)
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red

    white = ImageFolder(tmp_path, resolution=8, channels=3, fit="stretch", background="white")
    assert white.get([2]).x[0, :, 4, 6].tolist() == [255, 255, 255]


def test_fit_crop_pad_stretch(tmp_path):
    # 60x20: left third red, middle third green, right third blue
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    im.paste((0, 255, 0), (20, 0, 40, 20))
    im.paste((0, 0, 255), (40, 0, 60, 20))
    im.save(tmp_path / "wide.png")
    crop = ImageFolder(tmp_path, resolution=10, channels=3, fit="crop").get([0]).x[0].int()
    assert crop.shape == (3, 10, 10)
    assert (crop[1] >= 250).all() and (crop[0] <= 5).all() and (crop[2] <= 5).all()  # only the green middle

    pad = ImageFolder(tmp_path, resolution=12, channels=3, fit="pad").get([0]).x[0].int()
    # 60x20 -> 12x4, letterboxed at rows 4..7
    assert pad.shape == (3, 12, 12)
    assert (pad[:, :4] == 0).all() and (pad[:, 8:] == 0).all()
    assert (pad[:, 4:8].sum(0) >= 200).all()
    assert pad[0, 5, 0] > 200 and pad[2, 5, 11] > 200

    st = ImageFolder(tmp_path, resolution=12, channels=3, fit="stretch").get([0]).x[0].int()
    assert st.shape == (3, 12, 12)
    assert (st[0, :, 0] > 240).all() and (st[1, :, 6] > 200).all() and (st[2, :, 11] > 240).all()

    with pytest.raises(DataError, match="fit must be one of"):
        ImageFolder(tmp_path, resolution=8, fit="zoom")


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (30, 10), (255, 255, 255))  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed as portrait 10x30
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    x = ImageFolder(tmp_path, resolution=12, channels=1, fit="pad").get([0]).x[0, 0].int()
    # portrait -> black columns left and right, full-height white middle
    assert (x[:, :4] < 10).all() and (x[:, 8:] < 10).all() and (x[:, 5:7] > 240).all()


def _bad_folder(tmp_path):
    _noise(seed=1).save(tmp_path / "good1.png")
    _noise(seed=2).save(tmp_path / "good2.jpg", quality=90)
    buf = io.BytesIO()
    _noise((64, 64), seed=3).save(buf, "JPEG", quality=95)
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (tmp_path / "text.png").write_text("this is not a png at all\n")
    return {"truncated.jpg", "corrupt.jpg", "text.png"}


def test_bad_files_skipped_with_one_warning_each(tmp_path):
    bad = _bad_folder(tmp_path)
    with pytest.warns(BadImageWarning) as rec:
        ds = ImageFolder(tmp_path, resolution=8, channels=3)
    msgs = _bad_messages(rec)
    assert len(msgs) == 3
    for name in bad:
        assert sum(name in m for m in msgs) == 1, (name, msgs)
    assert sorted(p.name for p in ds.files) == ["good1.png", "good2.jpg"]
    assert sorted(p.name for p, _ in ds.skipped) == sorted(bad)
    assert ds.get([0, 1]).x.shape == (2, 3, 8, 8)


def test_streaming_bad_files(tmp_path):
    _bad_folder(tmp_path)
    with pytest.warns(BadImageWarning) as rec:
        ds = ImageFolder(tmp_path, resolution=8, channels=3, cache=False)
    msgs = _bad_messages(rec)
    # the header check catches the unidentifiable files up front
    assert any("corrupt.jpg" in m for m in msgs) and any("text.png" in m for m in msgs)
    names = [p.name for p in ds.files]
    n = len(ds)
    # every item decodes; a file only found broken on decode is warned about once and replaced
    with warnings.catch_warnings(record=True) as rec2:
        warnings.simplefilter("always")
        b1 = ds.get(list(range(n))).x
        ds._lru.clear()
        b2 = ds.get(list(range(n))).x
    late = _bad_messages(rec2)
    assert torch.equal(b1, b2) and b1.shape == (n, 3, 8, 8)
    assert "truncated.jpg" in names  # its header is fine: only decoding finds the damage
    assert len(late) == 1 and "truncated.jpg" in late[0]
    i = names.index("truncated.jpg")
    assert torch.equal(b1[i], b1[(i + 1) % n])
    assert sum("truncated.jpg" in m for m in msgs + late) == 1
    assert not any("truncated.jpg" in m for m in msgs)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    _noise((8, 8)).save(tmp_path / "small.png")
    _noise((30, 30)).save(tmp_path / "big.png")
    with pytest.warns(BadImageWarning, match=r"big\.png.*900 pixels"):
        ds = ImageFolder(tmp_path, resolution=8, max_pixels=100)
    assert [p.name for p in ds.files] == ["small.png"]
    _noise((12, 12)).save(tmp_path / "mid.png")  # 144 px: Pillow only warns (limit 100 < 144 < 200)
    # Pillow's own guard (here made tiny) also counts as a bad file, never an exception
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = ImageFolder(tmp_path, resolution=8)
    assert [p.name for p in ds.files] == ["small.png"]
    bad = _bad_messages(rec)
    assert len(bad) == 2 and any("big.png" in m for m in bad) and any("mid.png" in m for m in bad)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope", resolution=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path / "empty", resolution=8)
    f = tmp_path / "one.png"
    _noise((8, 8)).save(f)
    with pytest.raises(DataError, match="is a file"):
        ImageFolder(f, resolution=8)
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    (bad / "y.jpg").write_bytes(b"\x00" * 100)
    with pytest.warns(BadImageWarning), pytest.raises(DataError, match="none of the 2 image files"):
        ImageFolder(bad, resolution=8)
    with pytest.raises(DataError, match="channels"):
        ImageFolder(tmp_path / "empty", resolution=8, channels=2)


def test_class_subfolders_stay_unlabelled(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        _noise((8, 8)).save(tmp_path / cls / "0.png")
    ds = ImageFolder(tmp_path, resolution=8)
    assert ds.info.num_classes == 0 and ds.get([0, 1]).y is None
    assert [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)] == ["cats/0.png", "dogs/0.png"]


def test_multi_crop_views_are_fixed_crops_of_each_image(tmp_path):
    """crops=N: N items per file, each a crop of the source (a unique-value image proves where it
    came from), the same positions for the same seed wherever the folder sits, other positions for
    another seed; cached and streamed agree; too-small images are skipped with one warning."""
    from calae.data import open_dataset
    from calae.data.base import crop_boxes

    (tmp_path / "f").mkdir()
    # value of every pixel identifies its column (R) and row (G): 64 x 48 source
    cols = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    rows = np.tile((np.arange(48, dtype=np.uint8) * 5)[:, None], (1, 64))
    Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], -1), "RGB").save(tmp_path / "f" / "a.png")
    _noise((40, 40), seed=1).save(tmp_path / "f" / "b.png")
    ds = ImageFolder(tmp_path / "f", resolution=16, channels=3, crops=3, crop=16, seed=7)
    assert len(ds) == 6 and ds.get(list(range(6))).x.shape == (6, 3, 16, 16)
    boxes = crop_boxes(7, "a.png", 0, 3, 16, 64, 48)
    for k, (left, top, _, _) in enumerate(boxes):  # a 16 px crop at 16 px: the source pixels exactly
        x = ds.get([k]).x[0].int()
        assert torch.equal(x[0], torch.from_numpy(cols[top:top + 16, left:left + 16]).int())
        assert torch.equal(x[1], torch.from_numpy(rows[top:top + 16, left:left + 16]).int())
    assert len({tuple(b) for b in boxes}) == 3
    other = ImageFolder(tmp_path / "f", resolution=16, channels=3, crops=3, crop=16, seed=8)
    assert not torch.equal(other.get([0, 1, 2]).x, ds.get([0, 1, 2]).x)
    stream = ImageFolder(tmp_path / "f", resolution=16, channels=3, crops=3, crop=16, seed=7, cache=False)
    assert torch.equal(stream.get([5, 0, 3, 1]).x, ds.get([5, 0, 3, 1]).x)
    # a bigger crop resized down; `crop` alone takes one view, `crops` alone half the short side
    assert ImageFolder(tmp_path / "f", resolution=8, crops=2, crop=32).get([0, 1, 2, 3]).x.shape == (4, 3, 8, 8)
    assert len(ImageFolder(tmp_path / "f", resolution=8, crop=20)) == 2
    assert len(ImageFolder(tmp_path / "f", resolution=8, crops=4)) == 8
    with pytest.warns(BadImageWarning, match="smaller than crop=44"):
        small = ImageFolder(tmp_path / "f", resolution=8, crops=2, crop=44)
    assert len(small) == 2  # b.png (40x40) skipped
    # through the data spec, as `--data 'PATH?crops=3,crop=16'` passes it, with the run's seed
    spec = open_dataset(f"{tmp_path / 'f'}?crops=3,crop=16", resolution=16, seed=7)
    assert torch.equal(spec.get([0, 4]).x, ds.get([0, 4]).x)
    with pytest.raises(DataError, match="not crops= or crop="):
        open_dataset(f"{tmp_path / 'f'}?every=3", resolution=16)
    with pytest.raises(DataError, match="crops must be a whole number"):
        open_dataset(f"{tmp_path / 'f'}?crops=0", resolution=16)
