"""Training statistics: stats.jsonl (one JSON object per log interval), stats.csv (the same
records as a table) and TensorBoard events.

stats.csv is derived from stats.jsonl and never the other way round: one row per record, the
columns are the union of the records' keys (``kimg`` and ``step`` first, then in the order they
first appear); a cell is empty where a record lacks the key (the metrics rows have no losses). A
row is appended per record; when a record brings a key no earlier one had, the whole file is
rewritten from stats.jsonl with the wider header (atomically: a temporary file and a rename). On
every open (a fresh run or a resume, after stats.jsonl is cut back to the checkpoint) it is rebuilt
from stats.jsonl, so a row half-written by a kill never survives and both files hold the same
records.
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

CSV_FIRST = ("kimg", "step")  # the columns stats.csv starts with


class StatsWriter:
    def __init__(self, run_dir: Path, resume_kimg: float | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "stats.jsonl"
        self.csv_path = Path(run_dir) / "stats.csv"
        if resume_kimg is not None:
            truncate_after(self.path, resume_kimg)
        self._columns = rebuild_csv(self.path, self.csv_path)
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
        self._write_csv(record)
        if self._tb is not None:
            step = int(round(record["kimg"] * 1000))
            for k, v in record.items():
                if k != "kimg" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def _write_csv(self, record: dict) -> None:
        if not self._columns or any(k not in self._columns for k in record):
            self._columns = rebuild_csv(self.path, self.csv_path)  # a new key: a wider header for every row
            return
        with open(self.csv_path, "a", newline="") as f:
            f.write(_csv_rows([record], self._columns))

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


def csv_columns(records: list[dict]) -> list[str]:
    """``kimg``, ``step``, then every other key in the order it first appears."""
    cols = [k for k in CSV_FIRST if any(k in r for r in records)]
    for r in records:
        cols += [k for k in r if k not in cols]
    return cols


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    return json.dumps(v)


def _csv_rows(records: list[dict], columns: list[str], header: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in records:
        w.writerow([_cell(r.get(k)) for k in columns])
    return buf.getvalue()


def rebuild_csv(jsonl: Path, csv_path: Path) -> list[str]:
    """Write ``csv_path`` from the records of ``jsonl`` (atomically); no records: no CSV file.
    Returns the columns."""
    records = read_stats(jsonl)
    if not records:
        try:
            csv_path.unlink()
        except OSError:
            pass
        return []
    cols = csv_columns(records)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(_csv_rows(records, cols, header=True))
        os.replace(tmp, csv_path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return cols


def read_csv(path: Path) -> list[dict]:
    """stats.csv back as dicts of strings (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
