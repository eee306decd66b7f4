"""Stage-2 throughput (`ip2p gen-pairs`) on this machine: one triplet per UNet call vs candidates of several
triplets per call, side by side on the same toy triplets, model and preset.

Each layout runs the real command in fresh processes (model loading included, as a job would) on the same N toy
triplets (from the toy grammar, seed 0), with the bundled toy base and CLIP; the pairs kept are the same in every
layout (their seeds depend on the triplet and the candidate alone), which the script checks. It prints pairs a
minute and the ratio to the first layout, which is the recipe `build_toy.sh` has used on the 2-core CPU (two
single-threaded workers, one triplet per call).

    python benchmarks/bench_pairs.py --triplets 64 --preset toy-fast
    python benchmarks/bench_pairs.py --device cuda --dtype bf16 --triplets 2048 --preset toy \
        --layout "1x1:4:16" --layout "1x1:1024:256"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# workers x threads : candidates per UNet call : triplets per shard
DEFAULT_LAYOUTS = ("2x1:per-triplet:16", "2x1:64:16", "1x2:64:32")


def write_triplets(path: Path, n: int) -> None:
    from ip2p.toy.seeds import seed_triplets

    with open(path, "w", encoding="utf-8") as f:
        for t in seed_triplets(n, seed=0):
            f.write(json.dumps({"input": t["input"], "edit": t["edit"], "output": t["output"]}) + "\n")


def run_layout(layout: str, triplets: Path, out: Path, args, per_triplet: int) -> dict:
    shape, batch, shard_size = layout.split(":")
    workers, threads = (int(x) for x in shape.split("x"))
    batch = per_triplet if batch == "per-triplet" else int(batch)
    flags = [
        str(triplets),
        "-o",
        str(out),
        "--preset",
        args.preset,
        "--batch-size",
        str(batch),
        "--shard-size",
        shard_size,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--no-progress",
        "--no-report",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ip2p.cli",
                "gen-pairs",
                *flags,
                "--shard",
                str(w),
                "--num-shards",
                str(workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"layout {layout}: gen-pairs failed: {err.strip().splitlines()[-1]}")
    seconds = time.perf_counter() - start
    kept = []
    for path in sorted((out / "scores").glob("*.jsonl")):
        kept += [(r["item"], r["seed"]) for r in map(json.loads, path.read_text().splitlines()) if r["kept"]]
    return {"layout": layout, "batch": batch, "seconds": seconds, "pairs": len(kept), "kept": sorted(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triplets", type=int, default=64, help="toy triplets per layout")
    parser.add_argument("--preset", default="toy-fast", help="gen-pairs preset (toy or toy-fast)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument(
        "--layout",
        action="append",
        help="WORKERSxTHREADS:CANDIDATES_PER_CALL|per-triplet:TRIPLETS_PER_SHARD (repeatable; "
        f"default: {' '.join(DEFAULT_LAYOUTS)})",
    )
    args = parser.parse_args()
    from ip2p.pairs.generate import PRESETS

    per_triplet = {**PRESETS["paper"], **PRESETS[args.preset]}.get("num_candidates", 100)
    with tempfile.TemporaryDirectory() as tmp:
        triplets = Path(tmp) / "triplets.jsonl"
        write_triplets(triplets, args.triplets)
        results = [
            run_layout(layout, triplets, Path(tmp) / f"out-{i}", args, per_triplet)
            for i, layout in enumerate(args.layout or DEFAULT_LAYOUTS)
        ]
    first = results[0]
    print(f"{args.triplets} toy triplets, preset {args.preset}, {args.device} {args.dtype}")
    print(
        "| workers x threads : candidates per call : triplets per shard | s | pairs | pairs a minute | ratio |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        rate = 60 * r["pairs"] / r["seconds"]
        ratio = (r["pairs"] / r["seconds"]) / (first["pairs"] / first["seconds"])
        print(f"| {r['layout']} | {r['seconds']:.1f} | {r['pairs']} | {rate:.1f} | {ratio:.2f} |")
    same = all(r["kept"] == first["kept"] for r in results)
    print("same kept pairs in every layout:", same)


if __name__ == "__main__":
    main()
