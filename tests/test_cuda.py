"""The CUDA path: every method trains on the GPU in fp32 and bf16, resume equals an uninterrupted run
there, a GPU-trained snapshot loads and decodes on the CPU, conv nets and batches keep channels_last,
and the batch stream hands over pinned host memory that lands on the device.

Every test needs a CUDA device and is skipped without one (``pytest -m cuda`` selects them;
``benchmarks/gpu_check.sh`` runs this file on a machine with a GPU).
"""
import os

# bit-for-bit resume on the GPU needs deterministic cuBLAS workspaces, set before cuBLAS starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

from calae.config import TrainConfig  # noqa: E402
from calae.registry import METHODS, load_all  # noqa: E402
from calae.training import Trainer  # noqa: E402
from calae.training.stream import BatchStream  # noqa: E402

from conftest import tiny_model_cfg  # noqa: E402

load_all()
ALL = sorted(METHODS)
CUDA = torch.cuda.is_available()

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


def make_trainer(method, tmp_path, kimg=0.128, batch=16, precision="fp32", **train):
    cfg = TrainConfig(method=method, data="digits", resolution=16, kimg=kimg, batch_size=batch,
                      log_every_kimg=0.064, sample_every_kimg=100, snapshot_every_kimg=0.064,
                      precision=precision, device="cuda", **train)
    return Trainer(cfg, tiny_model_cfg(method), tmp_path, progress=False)


@pytest.fixture
def deterministic():
    """Deterministic cuDNN / cuBLAS kernels for the duration of one test."""
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[0], old[1]
    torch.use_deterministic_algorithms(old[2], warn_only=old[3])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ALL)
def test_every_method_trains_on_cuda(method, precision, tmp_path):
    tr = make_trainer(method, tmp_path / "r", precision=precision)
    assert tr.device.type == "cuda"
    assert (tr.amp is None) == (precision == "fp32")
    r = tr.run()
    assert r["steps"] == tr.total_steps
    assert r["skipped"] < r["steps"], "every step was skipped (non-finite losses)"
    for k, v in tr.method.state_dict().items():
        if v.is_floating_point():
            assert v.device.type == "cuda", k
            assert torch.isfinite(v).all(), k
    stats = (tmp_path / "r" / "stats.jsonl").read_text().splitlines()
    assert stats, "no stats were logged"


@pytest.mark.parametrize("method", ["vae", "alae"])
def test_resume_equals_uninterrupted_on_cuda(method, tmp_path, deterministic):
    a = make_trainer(method, tmp_path / "a")
    ra = a.run()
    b = make_trainer(method, tmp_path / "b")
    b.run(stop_at_step=3)
    b2 = make_trainer(method, tmp_path / "b")
    rb = b2.run()
    assert ra["steps"] == rb["steps"] == a.total_steps
    sa, sb = a.method.state_dict(), b2.method.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("method", ["vae", "alae"])
def test_cuda_snapshot_loads_and_decodes_on_cpu(method, tmp_path):
    from calae.api import load

    tr = make_trainer(method, tmp_path / "r", kimg=0.064)
    tr.run()
    model = load(tmp_path / "r", device="cpu")
    assert model.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in model.method.parameters())
    codes = model.sample_latents(4, seed=1)
    imgs = model.decode(codes)
    assert imgs.dtype == torch.uint8 and imgs.shape[0] == 4 and imgs.dim() == 4
    # the CPU copy decodes what the same snapshot decodes on the GPU (up to kernel rounding)
    on_gpu = load(tmp_path / "r", device="cuda")
    gpu = on_gpu.decode_tensor(codes.to(on_gpu.device)).float()
    cpu = model.decode_tensor(codes).float()
    assert torch.allclose(gpu, cpu, atol=1e-3, rtol=1e-3)

@pytest.mark.parametrize("method", [m for m in ALL if m in ("vae", "soft_intro_vae", "alae", "vae_gan", "calae")])
def test_conv_nets_and_batches_keep_channels_last(method, tmp_path):
    tr = make_trainer(method, tmp_path / "r", kimg=0.032)
    if not tr.method.conv:
        pytest.skip(f"{method}'s tiny nets are not convolutional")
    convs = [(n, p) for n, p in tr.method.named_parameters() if p.dim() == 4 and min(p.shape[2:]) > 1]
    assert convs, "a conv method without 4-d conv weights"
    for n, p in convs:
        assert p.device.type == "cuda", n
        assert p.is_contiguous(memory_format=torch.channels_last), n
    x = tr.batch(8).x
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
    tr.run()  # training keeps the layout (optimizer steps, EMA copies, checkpoints)
    for n, p in tr.method.named_parameters():
        if p.dim() == 4 and min(p.shape[2:]) > 1:
            assert p.is_contiguous(memory_format=torch.channels_last), n


def test_batches_arrive_pinned_and_land_on_the_device(tmp_path):
    tr = make_trainer("vae", tmp_path / "r", kimg=0.032)
    stream = BatchStream(tr.dataset, 8, seed=0, pin=True, prefetch=2)
    try:
        b = stream.next()
        assert b.x.is_pinned()
        assert b.y is None or b.y.is_pinned()
        p = tr.prepare(b)
        assert p.x.device.type == "cuda"
        torch.cuda.synchronize()
    finally:
        stream.close()


def test_trainer_stream_pins_on_cuda(tmp_path, monkeypatch):
    """Trainer.run asks its stream for pinned batches when it trains on CUDA."""
    import calae.training.loop as loop

    seen = []
    real = loop.BatchStream

    def spy(*a, **k):
        seen.append(k.get("pin"))
        return real(*a, **k)

    monkeypatch.setattr(loop, "BatchStream", spy)
    make_trainer("vae", tmp_path / "r", kimg=0.032).run()
    assert seen and all(seen)
