"""The shared network config (issue 12 §1): every method's config inherits NetConfig, so "same
architecture" is one equality check and a bad network option is the same one-line error everywhere."""
from __future__ import annotations

import dataclasses

import pytest

from calae.config import ConfigError, NetConfig, apply_overrides, from_dict
from calae.registry import METHODS, load_all

load_all()
NET_FIELDS = [f.name for f in dataclasses.fields(NetConfig)]
ALL = sorted(METHODS)


@pytest.mark.parametrize("method", ALL)
def test_every_method_config_is_a_netconfig(method):
    cfg = METHODS[method].Config()
    assert isinstance(cfg, NetConfig)
    net = cfg.net_config()
    assert type(net) is NetConfig and [f.name for f in dataclasses.fields(net)] == NET_FIELDS
    # flat names: --set reaches them as before
    train, model = {}, {}
    apply_overrides(train, model, METHODS[method].Config, ["hidden=48", "depth=2"])
    assert model == {"hidden": 48, "depth": 2} and not train
    assert from_dict(METHODS[method].Config, model).net_config().hidden == 48


def test_same_net_options_compare_equal_across_methods():
    opts = {"arch": "mlp", "hidden": 64, "depth": 2, "act": "lrelu", "base_channels": 16, "max_channels": 64,
            "norm": "none"}
    vae, aae, siv = (METHODS[m].Config(**opts) for m in ("vae", "aae", "soft_intro_vae"))
    assert vae.net_config() == aae.net_config() == siv.net_config() == NetConfig(**opts)
    assert METHODS["vae"].Config(**{**opts, "hidden": 65}).net_config() != aae.net_config()
    alae = METHODS["alae"].Config(arch="mlp", hidden=64, depth=2, base_channels=16, max_channels=64)
    assert alae.net_config() == NetConfig(**{**opts, "norm": "group"})  # ALAE leaves norm at its default


@pytest.mark.parametrize("key,value,message", [
    ("hidden", 0, "hidden must be >= 1 and <= 65536; got 0"),
    ("depth", 65, "depth must be >= 0 and <= 64; got 65"),
    ("base_channels", 0, "base_channels must be >= 1 and <= 4096; got 0"),
    ("max_channels", 5000, "max_channels must be >= 1 and <= 4096; got 5000"),
    ("hidden", 2.5, "hidden must be an integer; got 2.5"),
])
def test_bad_net_options_give_the_same_one_line_error_everywhere(key, value, message):
    for method in ALL:
        with pytest.raises(ConfigError) as e:
            METHODS[method].Config(**{key: value})
        assert str(e.value) == message, method
        assert "\n" not in str(e.value)


def test_norm_act_and_arch_choices():
    for method in ("vae", "aae", "soft_intro_vae", "as_intro_vae"):
        with pytest.raises(ConfigError, match=r"^norm must be one of none, group, batch; got 'layer'$"):
            METHODS[method].Config(norm="layer")
        with pytest.raises(ConfigError, match=r"^act must be one of lrelu, relu; got 'gelu'$"):
            METHODS[method].Config(act="gelu")
        with pytest.raises(ConfigError, match=r"^arch must be one of auto, conv, mlp; got 'style'$"):
            METHODS[method].Config(arch="style")
    with pytest.raises(ConfigError, match=r"^arch must be one of auto, mlp, style; got 'conv'$"):
        METHODS["alae"].Config(arch="conv")
    # an option ALAE's networks ignore is refused, not silently dropped
    with pytest.raises(ConfigError, match="norm does not apply to the networks of ALAE"):
        METHODS["alae"].Config(norm="batch")


def test_aae_builds_from_its_net_config_with_a_wider_decoder_input():
    """AAE's supervised G takes [z, one-hot]: built from net_config() and an explicit input width
    (formerly a SimpleNamespace copy of the whole config with z_dim patched)."""
    import torch

    from calae.data.base import DataInfo

    info = DataInfo(kind="image", channels=1, resolution=16, num_classes=10)
    m = METHODS["aae"](METHODS["aae"].Config(z_dim=3, hidden=16, depth=1, d_hidden=8, supervised=True), info)
    first = next(x for x in m.nets["G"].modules() if isinstance(x, torch.nn.Linear))
    assert first.in_features == 3 + 10 and first.out_features == 16
    assert m.decode(torch.zeros(2, 3)).shape == (2, 1, 16, 16)
