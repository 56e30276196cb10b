"""Training statistics: stats.jsonl (one JSON object per log interval) and TensorBoard events."""
from __future__ import annotations

import json
import warnings
from pathlib import Path


class StatsWriter:
    def __init__(self, run_dir: Path, resume_kimg: float | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "stats.jsonl"
        if resume_kimg is not None:
            truncate_after(self.path, resume_kimg)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception as e:  # tensorboard is optional at run time
                warnings.warn(f"TensorBoard logging off ({e}); stats.jsonl is still written")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(round(record["kimg"] * 1000))
            for k, v in record.items():
                if k != "kimg" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def image(self, tag: str, chw_uint8, kimg: float) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, chw_uint8, int(round(kimg * 1000)))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_stats(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():  # a named pipe would block forever
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):  # a line cut by a kill, or garbage: ignore it
            continue
        if isinstance(rec, dict) and isinstance(rec.get("kimg", 0), (int, float)) and not isinstance(rec.get("kimg", 0), bool):
            out.append(rec)
    return out


def truncate_after(path: Path, kimg: float) -> None:
    """On resume, drop records logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [r for r in read_stats(path) if r.get("kimg", 0) <= kimg + 1e-9]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)
