"""Run the benchmark: every system through every scenario on one redis-server, and
conveyor's embedded SQLite broker beside Huey's (``sqlite``: no server involved).

``python -m bench.run [--quick] [--systems conveyor,celery] [--scenarios roundtrip]``
from the repository root, in the project's ``.venv`` (``make bench`` /
``make bench-quick`` set everything up first). Each scenario runs ``--reps`` times,
the systems interleaved so that the machine's drift falls on all of them alike; a
system whose adapter does not take part in a scenario is skipped.
Results: ``bench/results/`` (full) or ``bench/results/quick/``: ``results.json``
(every run), ``results.md`` (the aims, medians with min-max) and ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.adapter import (
    EMBEDDED_SCENARIOS,
    EMBEDDED_SYSTEMS,
    OPTIONAL_SCENARIOS,
    SYSTEMS,
    VARIANTS,
)
from bench.report import write_report

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench" / "venvs"

#: Tasks per run of each scenario: (full, quick); producers: per way of sending.
SIZES: dict[str, tuple[int, int]] = {
    "tutorial": (20_000, 2_000),
    "tutorial_results": (20_000, 2_000),
    "defaults": (20_000, 2_000),
    "producers": (20_000, 4_000),
    "enqueue+drain": (20_000, 2_000),
    "bulk": (20_000, 2_000),
    "roundtrip": (500, 100),
    "io": (2_000, 2_000),
    "delayed": (10_000, 1_000),
    "cost": (1_000, 500),
    "sqlite": (5_000, 1_000),
}
#: A run that takes longer than this is stopped and reported as such.
RUN_TIMEOUT = 300.0


def python_of(system: str) -> str:
    """The interpreter of ``system``'s environment (conveyor: this one)."""
    if system == "conveyor" or system in VARIANTS:
        return sys.executable
    return str(VENVS / system / "bin" / "python")


def supported(system: str) -> set[str] | None:
    """The scenarios ``system``'s adapter takes part in, asked in its own environment;
    None if it could not say (every scenario then runs and shows the error)."""
    argv = [python_of(system), "-m", "bench.scenario", system, "--supported"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return set(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def run_once(system: str, scenario: str, n: int, url: str, workdir: Path) -> dict[str, Any]:
    """One run in a fresh process of the system's interpreter; its JSON line."""
    argv = [
        python_of(system),
        "-m",
        "bench.scenario",
        system,
        scenario,
        "--redis",
        url,
        "--n",
        str(n),
        "--workdir",
        str(workdir),
        "--timeout",
        str(RUN_TIMEOUT - 60),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {
            "system": system,
            "scenario": scenario,
            "n": n,
            "ok": False,
            "error": f"no answer within {RUN_TIMEOUT:.0f} s",
        }
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {
            "system": system,
            "scenario": scenario,
            "n": n,
            "ok": False,
            "error": f"exit {done.returncode}: {' | '.join(tail)}",
        }
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    if not result.get("ok"):
        (workdir / "stderr.txt").write_text(done.stderr)
    return result


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    redis_version = (
        subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
        .stdout.split()[2]
        .removeprefix("v=")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "redis-server": redis_version,
        "conveyor commit": commit or "?",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, once each")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scenarios", default=",".join(SIZES))
    parser.add_argument("--reps", type=int, default=None, help="runs per scenario [3; quick 1]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS)) + sorted(set(scenarios) - set(SIZES))
    if unknown:
        parser.error(f"unknown system or scenario: {', '.join(unknown)}")
    reps = args.reps or (1 if args.quick else 3)
    out = args.out or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)

    takes_part = {system: supported(system) for system in systems}
    # Not listed: the embedded scenario for the Redis peers, and the Redis scenarios
    # for the systems measured only on SQLite (neither was ever meant to run).
    unsupported = {
        system: [
            s
            for s in scenarios
            if found is not None and s not in found and s not in EMBEDDED_SCENARIOS
        ]
        for system, found in takes_part.items()
        if system not in VARIANTS and system not in EMBEDDED_SYSTEMS
    }
    for system, skipped in unsupported.items():
        if skipped:
            print(f"{system}: not supported, skipped: {', '.join(skipped)}", flush=True)

    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer  # the tests' real server, persistence off

    scratch = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    server = RedisServer(scratch / "redis")
    (scratch / "redis").mkdir()
    server.start()
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for rep in range(reps):
            for scenario in scenarios:
                n = SIZES[scenario][1 if args.quick else 0]
                for system in systems:
                    if scenario not in VARIANTS.get(system, (scenario,)):
                        continue
                    if system in EMBEDDED_SYSTEMS and scenario not in EMBEDDED_SCENARIOS:
                        continue  # even if its environment could not say (missing)
                    found = takes_part[system]
                    if found is not None and scenario not in found:
                        continue
                    workdir = scratch / f"{rep}-{scenario}-{system}"
                    result = run_once(system, scenario, n, server.url, workdir)
                    result["rep"] = rep
                    optional = OPTIONAL_SCENARIOS + EMBEDDED_SCENARIOS
                    if result.get("supported") is False and scenario in optional:
                        continue  # the adapter said so when it ran
                    results.append(result)
                    status = "ok" if result.get("ok") else f"FAILED {result.get('error', '')}"
                    print(
                        f"[{time.monotonic() - started:6.0f}s] {rep + 1}/{reps} {scenario:<16}"
                        f" {system:<9} {status}",
                        flush=True,
                    )
    finally:
        server.stop()
    info = {
        "machine": machine(),
        "quick": args.quick,
        "reps": reps,
        "sizes": {s: SIZES[s][1 if args.quick else 0] for s in scenarios},
        "unsupported": {system: skipped for system, skipped in unsupported.items() if skipped},
        "seconds": round(time.monotonic() - started),
    }
    (out / "results.json").write_text(json.dumps({"info": info, "runs": results}, indent=1))
    write_report(out, info, results)
    chart = VENVS / "chart" / "bin" / "python"
    if chart.exists():
        subprocess.run(
            [
                str(chart),
                str(ROOT / "bench" / "chart.py"),
                str(out / "results.json"),
                str(out / "results.png"),
            ],
            check=True,
        )
    failed = [r for r in results if not r.get("ok")]
    print(f"{len(results)} runs in {info['seconds']} s; {len(failed)} failed; see {out}/results.md")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
