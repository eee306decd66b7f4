"""Random-access reads of training examples per second: the hand-written Parquet reader that ip2p used before
``ip2p.data`` (kept here verbatim, as ``RowGroupReader``) against ``ip2p.data``'s reader through Hugging Face
``datasets`` (a memory-mapped Arrow cache), on the same Parquet files, side by side.

Two layouts of the same examples: our shards (``write_parquet_shard``: one row group a file) and the official
dataset's (row groups of 100 rows, as ``datasets.Dataset.to_parquet`` writes image sets). Each reader reads the
same random indices (one epoch in a shuffled order, as training reads), with and without decoding the images;
opening is timed apart (``datasets`` builds its Arrow cache on the first open, then maps it).

    python benchmarks/bench_read.py --examples 2000 --size 256
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image


class RowGroupReader:
    """ip2p's Parquet reader before ip2p.data: one row group decoded to Python lists at a time, cached by one."""

    def __init__(self, files):
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        self.index, self._handles = [], []
        for i, path in enumerate(self.files):
            handle = pq.ParquetFile(path)
            self._handles.append(handle)
            for group in range(handle.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                self.index.extend((i, group, r) for r in range(rows))
        self._cache = None

    def __len__(self):
        return len(self.index)

    def _group(self, file, group):
        if self._cache is None or self._cache[0] != (file, group):
            self._cache = ((file, group), self._handles[file].read_row_group(group).to_pydict())
        return self._cache[1]

    def row(self, i):
        file, group, row = self.index[i]
        return {k: v[row] for k, v in self._group(file, group).items()}

    def __getitem__(self, i):
        from ip2p.data.formats import Columns, row_to_example

        return row_to_example(
            self.row(i), Columns(*("original_image", "edit_prompt", "edited_image")), f"row {i}"
        )


def make_data(folder: Path, examples: int, size: int, per_file: int) -> dict[str, list[str]]:
    """The same examples as our shards and as the official layout; returns each layout's files."""
    import datasets

    from ip2p.data import write_parquet_shard

    rng = random.Random(0)
    rows = []
    for i in range(examples):
        noise = bytes(rng.getrandbits(8) for _ in range(size * size * 3 // 16))  # a little entropy for PNG
        base = Image.frombytes("RGB", (size // 4, size // 4), noise).resize((size, size))
        rows.append(
            {
                "original_image": base,
                "edit_prompt": f"edit {i}",
                "edited_image": base.transpose(Image.FLIP_LEFT_RIGHT),
            }
        )
    out: dict[str, list[str]] = {"ours": [], "official": []}
    features = datasets.Features(
        {
            "original_image": datasets.Image(),
            "edit_prompt": datasets.Value("string"),
            "edited_image": datasets.Image(),
        }
    )
    for k in range(0, examples, per_file):
        part = rows[k : k + per_file]
        ours = folder / "ours" / f"shard-{k // per_file:05d}.parquet"
        write_parquet_shard(part, ours)
        official = folder / "official" / f"train-{k // per_file:05d}.parquet"
        official.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(part, features=features).to_parquet(str(official), batch_size=100)
        out["ours"].append(str(ours))
        out["official"].append(str(official))
    return out


def time_reads(reader, order, decode: bool, seconds: float) -> tuple[float, int]:
    """Reads per second over ``order`` (stopping after ``seconds``), and how many reads were timed."""
    start, n = time.perf_counter(), 0
    for i in order:
        reader[i] if decode else reader.row(i)
        n += 1
        if time.perf_counter() - start > seconds:
            break
    return n / (time.perf_counter() - start), n


HEADER = (
    "| layout | images decoded | before: reads/s (reads) | datasets: reads/s (reads) | ratio | open before | "
    "open datasets (first / cached) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
)


def row(r: dict) -> str:
    return (
        f"| {r['layout']} | {'yes' if r['decode'] else 'no'} | {r['before_per_s']:.1f} ({r['before_reads']}) | "
        f"{r['datasets_per_s']:.1f} ({r['datasets_reads']}) | {r['ratio']:.1f} | {r['open_before_s']:.2f} s | "
        f"{r['open_datasets_first_s']:.2f} s / {r['open_datasets_s']:.2f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--per-file", type=int, default=500, help="examples per Parquet file")
    p.add_argument("--reads", type=int, default=1000, help="random reads timed per reader and mode, at most")
    p.add_argument("--seconds", type=float, default=30.0, help="at most this long per reader and mode")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    import datasets

    results, cache = [], datasets.config.HF_DATASETS_CACHE
    with tempfile.TemporaryDirectory() as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp) / "hf-cache"  # a cold cache: the first open builds it
        try:
            results = measure(args, Path(tmp))
        finally:
            datasets.config.HF_DATASETS_CACHE = cache
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def measure(args, tmp: Path) -> list[dict]:
    from ip2p.data import ParquetEditDataset

    results = []
    layouts = make_data(tmp, args.examples, args.size, args.per_file)
    order = random.Random(1).sample(range(args.examples), min(args.reads, args.examples))
    print(
        f"{args.examples} examples of {args.size} px, {args.per_file} a file; the same random order for both"
    )
    print(HEADER, flush=True)
    for layout, files in layouts.items():
        start = time.perf_counter()
        old = RowGroupReader(files)
        open_old = time.perf_counter() - start
        start = time.perf_counter()
        ParquetEditDataset(files)
        first_open = time.perf_counter() - start
        start = time.perf_counter()
        new = ParquetEditDataset(files)
        open_new = time.perf_counter() - start
        old[len(old) - 1], new[len(new) - 1]  # imports and first-call costs, outside the timing
        for decode in (False, True):
            (a, n_a), (b, n_b) = (time_reads(r, order, decode, args.seconds) for r in (old, new))
            results.append(
                {
                    "layout": layout,
                    "decode": decode,
                    "before_per_s": a,
                    "before_reads": n_a,
                    "datasets_per_s": b,
                    "datasets_reads": n_b,
                    "ratio": b / a,
                    "open_before_s": open_old,
                    "open_datasets_first_s": first_open,
                    "open_datasets_s": open_new,
                }
            )
            print(row(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
