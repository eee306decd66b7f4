"""The toy world's evaluation figure and table for docs/results.md: the editors against SDEdit.

Merges the summaries of several `ip2p evaluate` runs (each editor evaluated once, SDEdit taken from the first run
that has it), draws one curve per method (directional similarity x, image similarity y, as the paper's figures;
beside it the oracle's plane, edits right x, rest preserved y) and prints a Markdown table with the oracle's
verdicts, overall and per edit type, then how each editor's curve compares with SDEdit's in both planes.

    .venv/bin/python scripts/toy_figure.py "runs/toy-eval=synthesized pairs" "runs/toy-eval-exact=exact pairs" \
        -o docs/toy-eval.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ip2p.evaluate import PLANES, REFERENCES, curve_margin, plot_curves

COLUMNS = ("clip_direction", "clip_image", "oracle_edit", "oracle_preserved", "oracle_success")
TYPES = ("recolor", "change_kind", "background", "add", "remove", "style")
SHARED = ("sdedit", *REFERENCES)  # taken once, from the first run that has them; never labelled


def load(runs: list[str]) -> list[dict]:
    rows: list[dict] = []
    for spec in runs:
        folder, _, label = spec.partition("=")
        summary = Path(folder) / "summary.jsonl"
        if not summary.is_file():
            raise SystemExit(f"{summary}: not found (run `ip2p evaluate ... -o {folder}` first)")
        have = {r["method"] for r in rows if r["method"] in SHARED}
        for line in summary.read_text().splitlines():
            row = json.loads(line)
            if row["method"] in have:
                continue  # the baseline and the references once, from the first run that has them
            if row["method"] not in SHARED and label:
                row["method"] = f"{row['method']} ({label})"
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ["method", "setting", "n", *COLUMNS, *(f"success: {t}" for t in TYPES)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["method"], r["setting"].replace("_guidance_scale", ""), str(r["n"])]
        cells += [f"{r[c]:.3f}" if c.startswith("clip") else f"{100 * r[c]:.1f}%" for c in COLUMNS]
        cells += [
            f"{100 * r[f'oracle_success/{t}']:.0f}%" if f"oracle_success/{t}" in r else "-" for t in TYPES
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs", nargs="+", help="FOLDER=LABEL of an `ip2p evaluate` output (the label names its editor)"
    )
    p.add_argument("-o", "--output", default="docs/toy-eval.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--title", default="toy world, 300 held-out rendered scenes", help="the plot's title")
    args = p.parse_args()
    rows = load(args.runs)
    plot_curves(rows, Path(args.output), title=args.title)
    print(table(rows))
    for ref in dict.fromkeys(
        r["method"] for r in rows if r["method"] in REFERENCES and r["method"] != "input"
    ):
        beaten = [f"{p} plane {curve_margin(rows, ref, 'sdedit', plane=p)['dominated']}" for p in PLANES]
        print(f"\nreference {ref}: SDEdit points beaten on both axes: {', '.join(beaten)}")
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] not in SHARED):
        for plane in PLANES:
            margin = curve_margin(rows, method, "sdedit", plane=plane)
            print(f"\n{method} vs sdedit: {json.dumps({k: v for k, v in margin.items() if k != 'margins'})}")
            print("margins:", [round(m, 3) for m in margin["margins"]])
        print(
            f"\n{method} vs sdedit, CLIP plane within each edit type (SDEdit points beaten on both axes; margins)"
        )
        for kind in TYPES:
            margin = curve_margin(rows, method, "sdedit", edit_type=kind)
            if margin["points"]:
                margins = ", ".join(f"{m:+.3f}" for m in margin["margins"]) or "no overlap"
                print(f"  {kind:12} {margin['dominated']}/{margin['points']}; {margins}")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
