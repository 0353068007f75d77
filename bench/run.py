"""Run the benchmark: every system through every scenario on one redis-server, and
conveyor's embedded SQLite broker beside Huey's (``sqlite``: no server involved).

``python -m bench.run [--quick] [--systems conveyor,celery] [--scenarios roundtrip]``
from the repository root, in the project's ``.venv`` (``make bench`` /
``make bench-quick`` set everything up first). Each scenario runs ``--reps`` times,
the systems interleaved so that the machine's drift falls on all of them alike; a
system whose adapter does not take part in a scenario is skipped.
The ``replicas`` scenario (conveyor only) runs once per ``broker_replica_acks`` in
``REPLICA_ACKS``, with a replica of the redis-server started for it alone.
Results: ``bench/results/`` (full) or ``bench/results/quick/``: ``results.json``
(every run), ``results.md`` (the aims, medians with min-max) and ``results.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench.adapter import (
    EMBEDDED_SCENARIOS,
    EMBEDDED_SYSTEMS,
    FEATURE_SCENARIOS,
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
    "replicas": (10_000, 2_000),
}
#: A run that takes longer than this is stopped and reported as such.
RUN_TIMEOUT = 300.0
#: The ``broker_replica_acks`` the replicas scenario compares, one run each.
REPLICA_ACKS = (0, 1)
#: How long a replica may take to be in sync, and its master to forget it.
REPLICA_SECONDS = 30.0


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


def run_once(
    system: str, scenario: str, n: int, url: str, workdir: Path, extra: list[str]
) -> dict[str, Any]:
    """One run in a fresh process of the system's interpreter (``extra``: more
    arguments of ``bench.scenario``); its JSON line."""
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
        *extra,
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


def until(what: str, check: Any) -> None:
    """Poll ``check()`` until it is true, for ``REPLICA_SECONDS`` at most."""
    deadline = time.monotonic() + REPLICA_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} took more than {REPLICA_SECONDS:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def replica_of(master: Any, directory: Path) -> Iterator[None]:
    """A redis-server in ``directory`` replicating ``master`` (a ``RedisServer``), in
    sync on entry; on exit stopped, and forgotten by the master, which then keeps no
    replication backlog (copying every write into it would slow the scenarios after)."""
    from tests.redis_server import HOST, RedisServer

    directory.mkdir()
    replica = RedisServer(directory)
    client: redis.Redis = master.client()
    # the master's settings, restored on exit; no wait before the first full sync
    saved = client.config_get("repl-diskless-sync-delay") | client.config_get("repl-backlog-ttl")
    try:
        client.config_set("repl-diskless-sync-delay", 0)
        replica.start()
        with replica.client() as own:
            own.replicaof(HOST, master.port)
        until(
            "the replica's first sync",
            lambda: client.info("replication").get("slave0", {}).get("state") == "online",
        )
        yield
    finally:
        replica.stop()
        client.config_set("repl-backlog-ttl", 1)  # its minimum: freed within 2 s
        until(
            "the master's dropping its backlog",
            lambda: not client.info("replication").get("repl_backlog_active"),
        )
        for name, value in saved.items():
            client.config_set(str(name), str(value))
        client.close()


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
    # Not listed: the embedded scenario for the Redis peers, the scenarios of a setting
    # no peer has, and the Redis scenarios for the systems measured only on SQLite
    # (none was ever meant to run).
    unsupported = {
        system: [
            s
            for s in scenarios
            if found is not None
            and s not in found
            and s not in EMBEDDED_SCENARIOS
            and s not in FEATURE_SCENARIOS
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

    def takes_part_in(system: str, scenario: str) -> bool:
        if scenario not in VARIANTS.get(system, (scenario,)):
            return False
        if system in EMBEDDED_SYSTEMS and scenario not in EMBEDDED_SCENARIOS:
            return False  # even if its environment could not say (missing)
        found = takes_part[system]
        return found is None or scenario in found

    def run_listed(
        rep: int, scenario: str, system: str, n: int, extra: list[str]
    ) -> dict[str, Any] | None:
        """One run, printed; None if the adapter said it does not take part."""
        label = " ".join([system, *(a.lstrip("-") for a in extra)])
        workdir = scratch / f"{rep}-{scenario}-{label.replace(' ', '-')}"
        result = run_once(system, scenario, n, server.url, workdir, extra)
        result["rep"] = rep
        optional = OPTIONAL_SCENARIOS + EMBEDDED_SCENARIOS + FEATURE_SCENARIOS
        if result.get("supported") is False and scenario in optional:
            return None
        status = "ok" if result.get("ok") else f"FAILED {result.get('error', '')}"
        print(
            f"[{time.monotonic() - started:6.0f}s] {rep + 1}/{reps} {scenario:<16}"
            f" {label:<9} {status}",
            flush=True,
        )
        return result

    try:
        for rep in range(reps):
            for scenario in scenarios:
                n = SIZES[scenario][1 if args.quick else 0]
                runners = [s for s in systems if takes_part_in(s, scenario)]
                # one run per setting, in turns, so that drift falls on both alike
                settings: list[list[str]] = [[]]
                replica: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
                if scenario == "replicas":
                    order = REPLICA_ACKS if rep % 2 == 0 else REPLICA_ACKS[::-1]
                    settings = [["--replica-acks", str(acks)] for acks in order]
                    if runners:
                        replica = replica_of(server, scratch / f"{rep}-replica")
                with replica:
                    for system in runners:
                        for extra in settings:
                            result = run_listed(rep, scenario, system, n, extra)
                            if result is not None:
                                results.append(result)
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
