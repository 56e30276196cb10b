"""Which autocast precision a run uses when it is not measured, and why (one line for the log).

``--precision auto`` normally times fp32 and bf16 on the run's own network (``calae.training.runtime``)
and keeps the faster. This module is the rule used without a measurement (``CALAE_CALIBRATE=0``, or
a step too slow to compare): bf16 only where it is known to be faster than fp32:
- CUDA devices that support bf16 (tensor cores);
- CPUs with AMX tiles (Sapphire Rapids and later): bf16 matmuls and convolutions run on the tile
  units, several times fp32.
AVX-512 BF16 alone is no guarantee either way: on one AMD EPYC with it and no AMX, a 64 px VAE ran
348-370 s in bf16 against 311-335 s in fp32 (issue 12 §4) and the demo's VAE over 10x slower; on
another (2026-12-04) the demo ran 2.2x faster in bf16. So the unmeasured rule stays in fp32 there,
and says that it did not measure. ``--precision bf16`` still forces it.
"""
from __future__ import annotations

import torch


def _probe(name: str) -> bool:
    """A torch.cpu capability probe (private torch API: absent on some builds, then False)."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # a probe that cannot run (unknown CPU) means the capability is unknown: not fast
        return False


def cpu_has_amx() -> bool:
    return _probe("_is_amx_tile_supported")


def cpu_has_avx512_bf16() -> bool:
    return _probe("_is_avx512_bf16_supported")


def cpu_has_fast_bf16() -> bool:
    """True where bf16 is known to beat fp32 on this CPU without measuring: AMX tiles (AVX-512 BF16
    alone has gone both ways)."""
    return cpu_has_amx()


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, the reason in words) for --precision fp32 | bf16 | auto."""
    if precision == "fp32":
        return None, "--precision fp32"
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            return torch.bfloat16, ("--precision bf16; warning: this CPU has no AMX tiles, where bf16 can run "
                                    "slower than fp32 (--precision auto measures both)")
        return torch.bfloat16, "--precision bf16"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the CUDA device supports bf16"
        return None, "auto: the CUDA device has no bf16 support"
    if device.type != "cpu":
        return None, f"auto: bf16 autocast is not chosen automatically on {device.type}"
    if cpu_has_amx():
        return torch.bfloat16, "auto: the CPU has AMX tiles (bf16 matmuls several times fp32)"
    if cpu_has_avx512_bf16():
        return None, ("auto: not measured; the CPU has AVX-512 BF16 but no AMX, where bf16 has run "
                      "from 10x slower to 2x faster than fp32 (--precision bf16 forces it)")
    return None, "auto: not measured; the CPU has no bf16 units (AMX or AVX-512 BF16)"


__all__ = ["cpu_has_amx", "cpu_has_avx512_bf16", "cpu_has_fast_bf16", "resolve_precision"]
