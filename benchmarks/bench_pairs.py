"""Stage-2 throughput (`ip2p gen-pairs`) on this machine: one triplet per UNet call vs candidates of several
triplets per call, fp32 vs bf16, and presets, side by side on the same toy triplets, model and preset.

Each layout runs the real command in fresh processes (model loading included, as a job would) on the same N toy
triplets (from the toy grammar, seed 0), with the bundled toy base and CLIP. Layouts of one dtype keep the same
pairs (their seeds depend on the triplet and the candidate alone), which the script checks; another dtype changes
the numbers (and another preset the pairs), so `--judge` has the toy oracle judge every layout's pairs (`ip2p toy judge-pairs`) to show what it
costs in faithfulness. It prints pairs a minute and the ratio to the first layout, which is the recipe
`build_toy.sh` has used on the 2-core CPU (two single-threaded workers, one triplet per call, fp32).

    python benchmarks/bench_pairs.py --triplets 64 --preset toy-fast
    python benchmarks/bench_pairs.py --triplets 128 --preset toy-fast --judge \
        --layout "2x1:per-triplet:16" --layout "2x1:64:16" --layout "2x1:64:16:bf16"
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


def candidates_per_triplet(preset: str) -> int:
    from ip2p.pairs.generate import PRESETS

    return {**PRESETS["paper"], **PRESETS[preset]}.get("num_candidates", 100)


def run_layout(layout: str, triplets: Path, out: Path, args) -> dict:
    shape, batch, shard_size, *rest = layout.split(":")
    dtype = rest[0] if rest else args.dtype
    preset = rest[1] if len(rest) > 1 else args.preset
    per_triplet = candidates_per_triplet(preset)
    workers, threads = (int(x) for x in shape.split("x"))
    batch = per_triplet if batch == "per-triplet" else int(batch)
    flags = [
        str(triplets),
        "-o",
        str(out),
        "--preset",
        preset,
        "--batch-size",
        str(batch),
        "--shard-size",
        shard_size,
        "--device",
        args.device,
        "--dtype",
        dtype,
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
    result = {
        "layout": layout,
        "dtype": dtype,
        "preset": preset,
        "seconds": seconds,
        "pairs": len(kept),
        "kept": sorted(kept),
    }
    if args.judge:
        from ip2p.toy.judge_pairs import judge_pairs

        judged = judge_pairs(out / "data", progress=False)["overall"]["faithful"] if kept else float("nan")
        result["faithful"] = judged
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triplets", type=int, default=64, help="toy triplets per layout")
    parser.add_argument("--preset", default="toy-fast", help="gen-pairs preset (toy or toy-fast)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument(
        "--layout",
        action="append",
        help="WORKERSxTHREADS:CANDIDATES_PER_CALL|per-triplet:TRIPLETS_PER_SHARD[:DTYPE[:PRESET]] (repeatable; "
        f"DTYPE and PRESET default to --dtype and --preset; default: {' '.join(DEFAULT_LAYOUTS)})",
    )
    parser.add_argument(
        "--judge",
        action="store_true",
        help="also judge each layout's pairs with the toy oracle (faithful share)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        triplets = Path(tmp) / "triplets.jsonl"
        write_triplets(triplets, args.triplets)
        results = [
            run_layout(layout, triplets, Path(tmp) / f"out-{i}", args)
            for i, layout in enumerate(args.layout or DEFAULT_LAYOUTS)
        ]
    first = results[0]
    print(f"{args.triplets} toy triplets, {args.device}")
    judged = " faithful (oracle) |" if args.judge else ""
    print(
        "| workers x threads : candidates per call : triplets per shard[:dtype[:preset]] | preset | dtype | s | "
        f"pairs | pairs a minute | ratio |{judged}"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if args.judge else ""))
    for r in results:
        rate = 60 * r["pairs"] / r["seconds"]
        ratio = (r["pairs"] / r["seconds"]) / (first["pairs"] / first["seconds"])
        line = f"| {r['layout']} | {r['preset']} | {r['dtype']} | {r['seconds']:.1f} | {r['pairs']} | "
        line += f"{rate:.1f} | {ratio:.2f} |"
        print(line + (f" {100 * r['faithful']:.1f}% |" if args.judge else ""))
    for kind in dict.fromkeys((r["preset"], r["dtype"]) for r in results):
        alike = [r for r in results if (r["preset"], r["dtype"]) == kind]
        if len(alike) > 1:
            same = all(r["kept"] == alike[0]["kept"] for r in alike)
            print(f"same kept pairs in every {' '.join(kind)} layout:", same)


if __name__ == "__main__":
    main()
