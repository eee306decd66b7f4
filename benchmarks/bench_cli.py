"""How long the command line takes to answer `--help`, against `python -c "import torch"`, side by side.

Each command runs in a fresh process: `import torch` (the reference), `ip2p --help`, and `ip2p COMMAND --help` for
every subcommand (the toy world's included). Each round runs them all once, in turn, so that every command sees the
same machine load; the table gives each one's median over the rounds and its ratio to `import torch`.

    python benchmarks/bench_cli.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _ip2p() -> list[str]:
    """The `ip2p` console script beside this interpreter, else `python -m ip2p.cli`."""
    script = Path(sys.executable).parent / "ip2p"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ip2p.cli"]


def commands() -> dict[str, list[str]]:
    """Label -> command line: the reference, then `--help` of ip2p and of every subcommand."""
    from ip2p.cli import build_parser

    ip2p = _ip2p()
    out = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "ip2p --help": [*ip2p, "--help"],
    }
    for name, parser in build_parser()._subparsers._group_actions[0].choices.items():
        out[f"ip2p {name} --help"] = [*ip2p, name, "--help"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices:
                    out[f"ip2p {name} {sub} --help"] = [*ip2p, name, sub, "--help"]
    return out


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="times each command runs (default: %(default)s)"
    )
    parser.add_argument("--only", default=None, help="time only the commands whose label contains this text")
    args = parser.parse_args(argv)
    todo = commands()
    reference = next(iter(todo))
    if args.only:
        todo = {k: v for k, v in todo.items() if k == reference or args.only in k}
    times: dict[str, list[float]] = {label: [] for label in todo}
    for _ in range(args.rounds):
        for label, command in todo.items():
            times[label].append(time_once(command))
    base = statistics.median(times[reference])
    width = max(len(label) for label in todo)
    print(f"{'command':{width}}  {'median s':>9}  {'/ import torch':>14}   ({args.rounds} rounds)")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:{width}}  {median:9.3f}  {median / base:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
