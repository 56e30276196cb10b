"""What users of other toolkits expect in their first hour (issue 18): a config file for
`calae train`, stats.csv, pictures big enough to look at, sampling options and --keep."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calae.cli import main
from calae.training.stats import StatsWriter, read_csv, read_stats
from calae.viz.grid import viewable_scale
from test_cli import TINY, run_cli, trained  # noqa: F401  (trained: the small digits VAE run, a fixture)

DIGITS = ["--data", "digits", "--resolution", "16", "--batch-size", "16"]


def _resolved(err: str) -> dict:
    """The resolved config a --dry-run prints (the first JSON object in its output)."""
    lines = err.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start:end + 1]))


def _one_line_error(capsys, rc: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


# ---- 1. calae train --config FILE ----------------------------------------------------------------
def test_config_file_yaml_flat_keys_and_precedence(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        "method: vae\npreset: vae-digits\nkimg: 0.05\nbatch-size: 8\nz_dim: 4\n"
        "set: [base_channels=8, max_channels=16]\nprecision: fp32\nseed: 3\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--dry-run",
                 "--seed", "5", "--no-progress"]) == 0
    cfg = _resolved(capsys.readouterr().err)
    t, m = cfg["train"], cfg["model"]
    assert cfg["method"] == "vae"
    assert t["seed"] == 5  # the flag beats the file
    assert t["batch_size"] == 8 and t["kimg"] == 0.05 and m["z_dim"] == 4 and m["base_channels"] == 8  # file > preset
    assert m["lr"] == 0.001 and t["resolution"] == 16 and t["data"] == "digits"  # the preset where nothing else says
    assert not (tmp_path / "r").exists()


def test_config_file_json_with_set_and_method_on_the_command_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"data": "digits", "resolution": 16, "kimg": 0.05, "lr": 0.003,
                                                 "set": ["z_dim=4", "base_channels=8", "max_channels=16"],
                                                 "out": str(tmp_path / "r")}))
    assert main(["train", "vae", "--config", str(tmp_path / "c.json"), "--set", "z_dim=6", "--dry-run",
                 "--no-progress"]) == 0
    cfg = _resolved(capsys.readouterr().err)
    assert cfg["model"]["z_dim"] == 6 and cfg["model"]["lr"] == 0.003 and cfg["model"]["max_channels"] == 16


def test_a_runs_config_json_repeats_and_resumes_it(trained, tmp_path, capsys):  # noqa: F811
    own = json.loads((trained / "config.json").read_text())
    assert main(["train", "--config", str(trained / "config.json"), "--out", str(tmp_path / "again"), "--dry-run",
                 "--no-progress"]) == 0
    cfg = _resolved(capsys.readouterr().err)
    assert cfg["method"] == own["method"] and cfg["train"] == own["train"] and cfg["model"] == own["model"]
    # the same settings into the same folder resume it (a finished run: nothing to do), never "a different config"
    assert main(["train", "--config", str(trained / "config.json"), "--out", str(trained), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err
    # a flag still overrides the file
    assert main(["train", "--config", str(trained / "config.json"), "--out", str(tmp_path / "b"), "--kimg", "0.1",
                 "--dry-run", "--no-progress"]) == 0
    assert _resolved(capsys.readouterr().err)["train"]["kimg"] == 0.1


def test_config_file_mistakes_are_one_line_errors(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: vae\nbatchsize: 8\n")
    _one_line_error(capsys, main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]),
                    "'batchsize'", "batch_size")
    bad.write_text("train: {kimgs: 3}\nmethod: vae\n")
    _one_line_error(capsys, main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]), "'kimgs'", "kimg")
    _one_line_error(capsys, main(["train", "alae", "--config", str(trained / "config.json"), "--out",
                                  str(tmp_path / "x")]), "vae config", "not alae")
    (tmp_path / "nomethod.json").write_text('{"kimg": 1}')
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "nomethod.json"), "--out", str(tmp_path / "x")]),
                    "names no method")
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")]),
                    "no such file")
    (tmp_path / "c.toml").write_text("")
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "x")]),
                    ".json, .yaml or .yml")
    (tmp_path / "broken.json").write_text('{"kimg": ')
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "broken.json"), "--out", str(tmp_path / "x")]),
                    "not valid JSON")
    (tmp_path / "noout.json").write_text('{"method": "vae"}')
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "noout.json")]), "--out")
    _one_line_error(capsys, main(["train", "--out", str(tmp_path / "x")]), "name the method")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    (tmp_path / "ok.yaml").write_text("method: vae\n")
    _one_line_error(capsys, main(["train", "--config", str(tmp_path / "ok.yaml"), "--out", str(tmp_path / "x")]),
                    "pip install pyyaml")
    assert not (tmp_path / "x").exists()


def test_train_help_documents_config_and_precedence(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config FILE" in out and "--keep N" in out
    assert "flag (or --set) wins over --config FILE, the file over --preset" in out


# ---- 2. stats.csv ----------------------------------------------------------------------------------
def test_the_run_writes_stats_csv_matching_stats_jsonl(trained):  # noqa: F811
    rows = read_csv(trained / "stats.csv")
    recs = read_stats(trained / "stats.jsonl")
    assert len(rows) == len(recs) >= 1
    header = (trained / "stats.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["kimg", "step"] and "vae/loss" in header
    for row, rec in zip(rows, recs):
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: float(v) for k, v in rec.items()})


def test_stats_csv_new_keys_resume_and_torn_rows(tmp_path):
    w = StatsWriter(tmp_path, tensorboard=False)
    w.write({"kimg": 0.5, "step": 1, "loss": 2.0})
    w.write({"kimg": 1.0, "step": 2, "loss": 1.5})
    w.write({"kimg": 1.0, "metrics/fd": 7.0})  # a key no earlier row had: the header widens, old rows get blanks
    w.write({"kimg": 1.5, "step": 3, "loss": 1.25})
    w.close()
    text = (tmp_path / "stats.csv").read_text().splitlines()
    assert text[0] == "kimg,step,loss,metrics/fd"
    assert text[1:] == ["0.5,1,2.0,", "1.0,2,1.5,", "1.0,,,7.0", "1.5,3,1.25,"]
    with open(tmp_path / "stats.csv", "a") as f:  # a kill in the middle of a row
        f.write("2.0,4,1.")
    w = StatsWriter(tmp_path, resume_kimg=1.0, tensorboard=False)  # resumed from the 1.0 kimg checkpoint
    assert [r["kimg"] for r in read_csv(tmp_path / "stats.csv")] == ["0.5", "1.0", "1.0"]
    w.write({"kimg": 1.5, "step": 3, "loss": 1.0})
    w.close()
    rows = read_csv(tmp_path / "stats.csv")
    assert len(rows) == len(read_stats(tmp_path / "stats.jsonl")) == 4 and rows[-1] == {"kimg": "1.5", "step": "3",
                                                                                         "loss": "1.0"}


# ---- 3. pictures big enough to look at ----------------------------------------------------------------
def test_viewable_scale():
    assert viewable_scale(600) == 1
    assert viewable_scale(256) == 2 and viewable_scale(255) == 3
    assert viewable_scale(38) == 8  # capped
    assert viewable_scale(300, 3000) == 1  # a tall strip never passes 4096 px
    assert viewable_scale(146, 1500) == 2


def test_pictures_are_enlarged_by_default_and_scale_overrides(trained, tmp_path):  # noqa: F811
    size = lambda name: Image.open(tmp_path / name).size  # noqa: E731
    assert main(["sample", str(trained), "--n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(trained), "--n", "9", "--scale", "1", "--out", str(tmp_path / "s1.png")]) == 0
    native = 3 * (16 + 2) + 2
    assert size("s1.png") == (native, native)
    assert size("s.png") == (native * 8, native * 8)  # 56 px wide: x8 (the cap) reaches 448
    assert main(["sample", str(trained), "--n", "9", "--scale", "3", "--out", str(tmp_path / "s3.png")]) == 0
    assert size("s3.png") == (3 * native, 3 * native)
    assert main(["reconstruct", str(trained), "--n", "16", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["reconstruct", str(trained), "--n", "16", "--scale", "1", "--out", str(tmp_path / "r1.png")]) == 0
    w1 = 8 * 18 + 2
    assert size("r1.png") == (w1, 4 * 18 + 2) and size("r.png")[0] == 4 * w1 >= 512
    assert main(["interpolate", str(trained), "--pairs", "4", "--steps", "4", "--out", str(tmp_path / "i.gif")]) == 0
    assert main(["interpolate", str(trained), "--pairs", "4", "--steps", "4", "--scale", "1",
                 "--out", str(tmp_path / "i1.gif")]) == 0
    w1 = 4 * 18 + 2
    assert size("i1.gif") == (w1, 20) and size("i.gif") == (7 * w1, 7 * 20) and size("i.gif")[0] >= 512
    assert size("i.png") == (7 * w1, 7 * (4 * 20))  # the strip at the same scale
    with Image.open(tmp_path / "i.gif") as g:
        assert g.n_frames == 4 + 2


def test_scale_must_be_a_positive_whole_number(trained, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        main(["sample", str(trained), "--scale", "0", "--out", str(tmp_path / "s.png")])
    assert e.value.code == 2 and "--scale must be >= 1" in capsys.readouterr().err


# ---- 4. sampling options ------------------------------------------------------------------------------
def test_sample_grid_nrow_and_temperature(trained, tmp_path, capsys):  # noqa: F811
    assert main(["sample", str(trained), "--grid", "3x5", "--scale", "1", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (5 * 18 + 2, 3 * 18 + 2)
    assert main(["sample", str(trained), "--n", "6", "--nrow", "6", "--scale", "1",
                 "--out", str(tmp_path / "n.png")]) == 0
    assert Image.open(tmp_path / "n.png").size == (6 * 18 + 2, 18 + 2)
    outs = {}
    for t in ("1", "0.01", "3"):
        assert main(["sample", str(trained), "--n", "64", "--temperature", t, "--out", str(tmp_path / f"t{t}.npz")]) == 0
        outs[t] = np.load(tmp_path / f"t{t}.npz")["samples"]
    spread = {t: x.std(axis=0).mean() for t, x in outs.items()}
    assert spread["0.01"] < 0.5 * spread["1"] < spread["3"]  # a colder draw gives less varied samples
    assert main(["sample", str(trained), "--n", "64", "--out", str(tmp_path / "plain.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "plain.npz")["samples"], outs["1"])  # T=1: what it always drew
    capsys.readouterr()
    _one_line_error(capsys, main(["sample", str(trained), "--grid", "3x5", "--n", "4", "--out", str(tmp_path / "x.png")]),
                    "--grid 3x5 holds 15")
    _one_line_error(capsys, main(["sample", str(trained), "--grid", "three", "--out", str(tmp_path / "x.png")]),
                    "ROWSxCOLUMNS")
    _one_line_error(capsys, main(["sample", str(trained), "--grid", "2x2", "--nrow", "2",
                                  "--out", str(tmp_path / "x.png")]), "not both")
    _one_line_error(capsys, main(["sample", str(trained), "--truncation", "0.7", "--out", str(tmp_path / "x.png")]),
                    "no truncation option", "alae")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def alae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("alae") / "run"
    assert main(["train", "alae", *DIGITS, "--kimg", "0.032", "--out", str(out), "--set", "arch=style",
                 "--set", "z_dim=8", "--set", "base_channels=4", "--set", "max_channels=8", "--set", "mapping_layers=2",
                 "--set", "d_layers=2", "--no-progress", "--precision", "fp32"]) == 0
    return out


def test_truncation_and_temperature_on_a_style_model(alae_run, tmp_path, capsys):
    def draw(*opts):
        p = tmp_path / "s.npz"
        assert main(["sample", str(alae_run), "--n", "8", *opts, "--out", str(p)]) == 0
        return np.load(p)["samples"]

    full, half, none = draw(), draw("--truncation", "0.5"), draw("--truncation", "0")
    spread = [x.std(axis=0).mean() for x in (none, half, full)]
    assert spread[0] < spread[1] < spread[2]  # psi pulls the codes towards the mean code (psi 0: onto it)
    cold = draw("--temperature", "0.01")
    assert cold.std(axis=0).mean() < full.std(axis=0).mean()
    assert main(["sample", str(alae_run), "--n", "4", "--truncation", "0.7", "--out", str(tmp_path / "p.png")]) == 0
    capsys.readouterr()
    _one_line_error(capsys, main(["sample", str(alae_run), "--truncation", "5", "--out", str(tmp_path / "x.png")]),
                    "psi must lie in")


# ---- 5. --keep ------------------------------------------------------------------------------------------
def test_keep_the_newest_numbered_snapshots(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "vae", *DIGITS, "--kimg", "0.096", "--set", "snapshot_every_kimg=0.016", "--out", str(out),
            "--keep", "2", *TINY]
    assert main(args) == 0
    assert "numbered snapshots" in capsys.readouterr().out
    kept = sorted(p.name for p in (out / "snapshots").iterdir())
    assert kept == ["snapshot-000000080.safetensors", "snapshot-000000096.safetensors"]
    assert (out / "state.safetensors").is_file() and (out / "snapshot.safetensors").is_file()
    import calae.api as ca

    old, new = ca.load(out / "snapshots" / kept[0]), ca.load(out / "snapshot.safetensors")
    assert old.meta["kimg"] == pytest.approx(0.08) and new.meta["kimg"] == pytest.approx(0.096)
    assert not torch.equal(old.method.state_dict()["nets.G." + next(iter(old.method.nets["G"].state_dict()))],
                           new.method.state_dict()["nets.G." + next(iter(new.method.nets["G"].state_dict()))])
    # extending the run with the same --keep resumes it and keeps pruning
    assert main([*args[:args.index("--kimg") + 1], "0.128", *args[args.index("--kimg") + 2:]]) == 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["snapshot-000000112.safetensors",
                                                                      "snapshot-000000128.safetensors"]
    # --keep is how the run is stored, not what it trains: changing it resumes too
    assert main(["train", "vae", *DIGITS, "--kimg", "0.144", "--set", "snapshot_every_kimg=0.016", "--out", str(out),
                 "--keep", "1", *TINY]) == 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["snapshot-000000144.safetensors"]
    # --keep all keeps every one; without --keep there is no snapshots/ folder
    assert main(["train", "vae", *DIGITS, "--kimg", "0.048", "--set", "snapshot_every_kimg=0.016", "--out",
                 str(tmp_path / "all"), "--keep", "all", *TINY]) == 0
    assert len(list((tmp_path / "all" / "snapshots").iterdir())) == 3
    assert main(["train", "vae", *DIGITS, "--kimg", "0.032", "--out", str(tmp_path / "none"), *TINY]) == 0
    assert not (tmp_path / "none" / "snapshots").exists()
    with pytest.raises(SystemExit):
        main(["train", "vae", "--out", str(tmp_path / "y"), "--keep", "0"])
    assert "--keep must be >= 1 (or all)" in capsys.readouterr().err


# ---- .npz outputs say what they hold ------------------------------------------------------------------
def test_npz_outputs_name_their_range_and_parameters(trained, tmp_path):  # noqa: F811
    from calae.data.fractals import PARAM_NAMES

    assert main(["sample", str(trained), "--n", "3", "--out", str(tmp_path / "s.npz")]) == 0
    s = np.load(tmp_path / "s.npz")
    assert str(s["value_range"]) in ("tanh", "unit") and s["samples"].shape == (3, 1, 16, 16)
    out = tmp_path / "fr"
    assert main(["train", "vae", "--data", "fractals", "--resolution", "16", "--n-data", "32", "--kimg", "0.016",
                 "--batch-size", "16", "--out", str(out), *TINY]) == 0
    assert main(["encode", str(out), "--n", "10", "--out", str(tmp_path / "c.npz")]) == 0
    c = np.load(tmp_path / "c.npz")  # no pickle needed
    assert c["params"].shape == (10, 40) and list(c["param_names"]) == list(PARAM_NAMES) and str(c["latent"]) == "z"


# ---- 6. projection and the thumbnail map ----------------------------------------------------------------
def test_project_lowers_the_pixel_error_and_writes_codes_and_picture(trained, tmp_path, capsys):  # noqa: F811
    import calae.api as ca

    m = ca.load(trained)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, x in enumerate(m.sample(5, seed=7)):  # images the model can make, so a code exists for each
        Image.fromarray(x[0].numpy()).resize((24, 24)).save(imgs / f"{i}.png")
    out = tmp_path / "p.npz"
    assert main(["project", str(trained), str(imgs), "--steps", "60", "--out", str(out)]) == 0
    d = np.load(out)
    assert d["codes"].shape == d["init_codes"].shape == (5, 4) and str(d["init"]) == "encoder"
    assert d["mse"].mean() < 0.9 * d["mse_init"].mean()  # better than the encoder's code
    np.testing.assert_allclose(d["init_codes"], m.encode(np.stack([load16(p) for p in sorted(imgs.iterdir())])),
                               rtol=1e-4, atol=1e-5)
    pic = Image.open(out.with_suffix(".png"))
    assert pic.size == (8 * (3 * 18 + 2), 8 * (5 * 18 + 2))  # target, start, projection per row; x8 (the cap)
    assert "pixel MSE" in capsys.readouterr().err
    assert main(["project", str(trained), str(imgs / "0.png"), "--steps", "3", "--init", "mean",
                 "--out", str(tmp_path / "one.npz")]) == 0
    one = np.load(tmp_path / "one.npz")
    assert one["codes"].shape == (1, 4) and np.allclose(one["init_codes"], m.sample_latents(1000, 0).mean(0), atol=1e-5)
    capsys.readouterr()
    _one_line_error(capsys, main(["project", str(trained), str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz")]),
                    "no such image file or folder")
    _one_line_error(capsys, main(["project", str(trained), str(imgs), "--out", str(tmp_path / "x.png")]), ".npz")


def load16(path):
    from calae.data.folder import load_image

    return load_image(path, 16, 1)


def test_latents_thumbnails(trained, tmp_path, capsys):  # noqa: F811
    from calae.viz.latent_map import thumbnail_map

    assert main(["latents", str(trained), "--n", "80", "--thumbnails", "--out", str(tmp_path / "t.png")]) == 0
    pic = np.asarray(Image.open(tmp_path / "t.png").convert("L"))
    assert pic.shape == (1024, 1024) and (pic < 250).mean() > 0.05  # images on a white canvas
    assert "images drawn" in capsys.readouterr().err
    # two far-apart points: both drawn where their positions say; a third on top of one is left out
    ims = torch.stack([torch.zeros(1, 8, 8, dtype=torch.uint8), torch.full((1, 8, 8), 100, dtype=torch.uint8),
                       torch.full((1, 8, 8), 200, dtype=torch.uint8)])
    img, shown = thumbnail_map(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]), ims, size=100, thumb=10)
    a = np.asarray(img.convert("L"))
    assert shown == 2 and a[95, 5] == 0 and a[5, 95] == 100  # (0, 0) bottom left, (1, 1) top right
    _one_line_error(capsys, main(["latents", str(trained), "--thumbnails", "--out", str(tmp_path / "t.npz")]),
                    "--thumbnails")
