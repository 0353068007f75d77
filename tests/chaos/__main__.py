"""``make chaos``: the full chaos run, Redis then SQLite; prints the table, writes the JSON.

Run from tests/: ``python -m chaos [options]`` (``--help``). Exit code 0 only if
every broker's run passed. Each run keeps its files (logs, journals, the full
report with timelines) in ``--workdir``/<broker>; ``--json`` gets the figures
and the failures (without timelines) of all of them, for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from . import TESTS
from .config import Broker, ChaosConfig, full, short
from .engine import run
from .report import Report, table


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--broker", choices=("redis", "sqlite", "both"), default="both")
    parser.add_argument("--short", action="store_true", help="the version inside make test")
    parser.add_argument("--redis-tasks", type=int, help="tasks on Redis [100000]")
    parser.add_argument("--sqlite-tasks", type=int, help="tasks on SQLite [20000]")
    parser.add_argument("--rate", type=float, help="sends per second [400 Redis, 150 SQLite]")
    parser.add_argument("--lease", type=float, help="broker_lease_timeout, seconds [3]")
    parser.add_argument("--kill-every", type=_pair, metavar="MIN,MAX", help="seconds [3,8]")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", type=Path, help="where runs keep their files [a new temp dir]")
    parser.add_argument("--json", type=Path, help="write the figures of every run here")
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> list[ChaosConfig]:
    brokers: list[Broker] = ["redis", "sqlite"] if args.broker == "both" else [args.broker]
    out = []
    for broker in brokers:
        config = short(broker) if args.short else full(broker)
        tasks = args.redis_tasks if broker == "redis" else args.sqlite_tasks
        changes: dict[str, Any] = {}
        if tasks:
            changes["tasks"] = tasks
        for name in ("rate", "lease", "kill_every", "seed"):
            if getattr(args, name) is not None:
                changes[name] = getattr(args, name)
        out.append(config.with_(**changes))
    return out


def commit() -> str:
    """The checked-out commit, ``+changes`` if the tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=TESTS, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=TESTS, capture_output=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    runs = configs(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    for config in runs:
        # sending, then the last leases and long tasks; starting and stopping processes
        estimate = config.send_seconds + config.lease * 4 + 30
        print(
            f"chaos on {config.broker}: {config.tasks:,} tasks at {config.rate:g}/s "
            f"(sending {config.send_seconds:.0f} s, about {estimate / 60:.0f} min in all), "
            f"files in {workdir / config.broker}",
            flush=True,
        )
    reports: list[Report] = []
    for config in runs:
        began = time.monotonic()
        report = run(config, workdir / config.broker)
        reports.append(report)
        print(report.text(), flush=True)
        print(f"({time.monotonic() - began:.0f} s; full report: {report.data['workdir']})\n")
    print("\n".join(table(reports)))
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "commit": commit(),
                    "cpus": os.cpu_count(),
                    "runs": [
                        {
                            "passed": r.passed,
                            "summary": r.summary,
                            "config": r.data["config"],
                            "failures": [
                                {k: v for k, v in f.items() if k != "timeline"}
                                for f in r.data["failures"]
                            ],
                        }
                        for r in reports
                    ],
                },
                option=orjson.OPT_INDENT_2,
            )
            + b"\n"
        )
        print(f"figures written to {args.json}")
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
