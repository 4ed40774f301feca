"""Benchmark scoop-core's two built-in transports, ZeroMQ and Redis, against each other.

The same programs of bench/programs run unchanged through both transports
(``python -m scoop --transport T -n W prog.py N``): ``zmq``, the default,
where the broker is a thread of the launcher, and ``redis``, where a Redis
server is the broker. The bar this checks (``--check``): the Redis transport
reaches at least half of ZeroMQ's throughput on both programs.

- ``map_tiny``: ``list(futures.map(abs, range(N)))``, throughput in items/s;
- ``submit_many``: N ``futures.submit`` then ``.result()``, in submits/s.

It starts its own throw-away ``redis-server`` (``--save "" --appendonly
no``, in a temporary directory, on a free loopback port, never the usual
6379, which may be someone's real server) and stops it at the end, on
Ctrl-C, SIGTERM and errors too. Every Redis run gets its own key prefix
(``SCOOP_TRANSPORT_REDIS_PREFIX``); after the run, no key may be left under
it (the transport deletes a run's keys when it closes): any that is, is
reported (not a failure) and deleted. The caller's ``SCOOP_TRANSPORT*``
variables are not passed on, so a run never reaches another Redis server.

The conventions are bench/run.py's, and so are its helpers (imported): every
measurement is repeated (``--repeat``) and the medians reported, of the
program's own time around its parallel part (``RESULT name seconds
checksum``) and of the whole process's wall time; the two transports
alternate, and which one goes first changes every round, so both see the
same noise on a shared machine: compare the ratios, not absolute numbers.
Every run has a timeout and its own session, and this process is the
subreaper of its descendants, so whatever a run leaves behind is killed
(run.py's ``run_once``, told to spare the Redis server, a child of ours too).

    python bench/transports.py                      # both programs, 3 repeats
    python bench/transports.py --markdown --check   # exit 1 below the bar
    python bench/transports.py --map-items 50000 --submits 5000 --repeat 5

Exit status 1 if a run failed, timed out or printed a wrong checksum (the
reason is printed), or with ``--check`` if a redis/zmq ratio is below 0.5.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (bench/run.py, found through the line above)
    Series,
    add_run_options,
    become_subreaper,
    heading,
    kill_orphans,
    machine,
    progress,
    report_failures,
    run_once,
    tail,
)

PROGRAMS_DIR = HERE / "programs"
TRANSPORTS = ["zmq", "redis"]
# program -> what one unit of its N is
UNITS = {"map_tiny": "items", "submit_many": "submits"}
BAR = 0.5  # redis must reach at least this fraction of zmq's throughput
FORBIDDEN_PORT = 6379  # someone's real Redis server, perhaps


# -- the throw-away Redis server -------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on now (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


class RedisServer:
    """``redis-server`` on a free loopback port, without persistence, in a temporary directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="scoop-bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 5) -> None:
        import redis  # the redis transport needs redis-py anyway

        log = Path(self.dir) / "redis.log"
        for _ in range(attempts):  # another process may take the port first
            self.port = free_port()
            options = {
                "bind": "127.0.0.1",
                "port": str(self.port),
                "save": "",  # no snapshots
                "appendonly": "no",
                "dir": self.dir,
                "logfile": str(log),
                "daemonize": "no",
                "protected-mode": "yes",
            }
            self.proc = subprocess.Popen(
                [self.binary, *(a for k, v in options.items() for a in (f"--{k}", v))],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C is ours to handle: keys are checked first
            )
            client = redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=10)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    pid = client.info("server").get("process_id")
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
                    continue
                if pid != self.proc.pid:  # someone else's server took the port first
                    break
                self.client = client
                return
            client.close()
            self.stop()
        text = log.read_bytes() if log.exists() else b""
        raise SystemExit(f"{self.binary} did not start: {tail(text)}")

    def version(self) -> str:
        return str(self.client.info("server").get("redis_version", "?")) if self.client else "?"

    def keys(self, pattern: str = "*") -> list[str]:
        """The keys matching ``pattern``; ``["(cannot list keys: why)"]`` if the server fails."""
        if self.client is None:
            return ["(cannot list keys: no server)"]
        try:
            return sorted(k.decode(errors="replace") for k in self.client.scan_iter(match=pattern))
        except Exception as exc:  # the server died or hangs: say so, go on with the zmq runs
            return [f"(cannot list keys: {exc})"]

    def delete(self, keys: list[str]) -> None:
        if keys and self.client is not None:
            with contextlib.suppress(Exception):
                self.client.delete(*keys)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- reporting -------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    series: dict[str, Series] = field(default_factory=lambda: {t: Series() for t in TRANSPORTS})
    left_keys: list[str] = field(default_factory=list)  # "prefix: keys" of redis runs

    def seconds(self, transport: str) -> float | None:
        return self.series[transport].median("seconds")

    def throughput(self, transport: str) -> float | None:
        s = self.seconds(transport)
        return self.n / s if s else None

    def ratio(self) -> float | None:
        """redis throughput / zmq throughput (above 1: redis is faster)."""
        z, r = self.throughput("zmq"), self.throughput("redis")
        return r / z if z and r else None


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(results: dict[str, Result], markdown: bool) -> list[str]:
    head = [
        "program",
        "N",
        "zmq (s)",
        "redis (s)",
        "zmq N/s",
        "redis N/s",
        "redis/zmq",
        "zmq wall (s)",
        "redis wall (s)",
    ]
    rows = []
    for name, res in results.items():
        rows.append(
            [
                name,
                f"{res.n} {UNITS[name]}",
                *(fmt(res.seconds(t)) if res.series[t].good() else "FAIL" for t in TRANSPORTS),
                *(rate(res.throughput(t)) for t in TRANSPORTS),
                fmt(res.ratio(), 2),
                *(fmt(res.series[t].median("wall")) for t in TRANSPORTS),
            ]
        )
    if markdown:
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(head)] + [line(r) for r in rows]


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(p, list(UNITS))
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--map-items", type=int, default=200000, help="N of map_tiny (default %(default)s)"
    )
    p.add_argument(
        "--submits", type=int, default=20000, help="N of submit_many (default %(default)s)"
    )
    p.add_argument(
        "--redis-server",
        default="redis-server",
        help="the redis-server binary to start (default: the one on PATH)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 if Redis reaches less than {BAR} of ZeroMQ's throughput on a program",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1 or args.workers < 1 or args.map_items < 1 or args.submits < 1:
        raise SystemExit("--repeat, --workers, --map-items and --submits must be at least 1")
    binary = shutil.which(args.redis_server)
    if binary is None:
        raise SystemExit(f"{args.redis_server}: not found (install Redis or give --redis-server)")
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    sizes = {"map_tiny": args.map_items, "submit_many": args.submits}
    results = {name: Result(sizes[name]) for name in args.programs}
    env = {
        k: v
        for k, v in os.environ.items()
        # SCOOP_TRANSPORT_REDIS_URL & co. of the caller could reach another Redis server.
        if not k.startswith(("_SCOOP_", "SCOOP_TRANSPORT"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    workdir = tempfile.mkdtemp(prefix="scoop-bench-")  # no scoop.toml of the caller's cwd
    server = RedisServer(binary)
    left_at_end: list[str] = []
    try:
        server.start()
        assert server.proc is not None
        keep = frozenset({server.proc.pid})
        print(
            f"{heading(args.workers, args.repeat)}  redis-server {server.version()} at {server.url}",
            file=sys.stderr,
        )
        for rep in range(args.repeat):
            for name in args.programs:
                res = results[name]
                prog = str(PROGRAMS_DIR / f"{name}.py")
                # Alternate who goes first, so neither always runs on a warmer machine.
                order = TRANSPORTS if rep % 2 == 0 else TRANSPORTS[::-1]
                for transport in order:
                    run_env = env
                    prefix = ""
                    if transport == "redis":
                        prefix = f"scoopbench-{os.getpid()}-{rep}-{name}"
                        run_env = {
                            **env,
                            "SCOOP_TRANSPORT_REDIS_URL": server.url,
                            "SCOOP_TRANSPORT_REDIS_PREFIX": prefix,
                        }
                    cmd = [sys.executable, "-m", "scoop", "--transport", transport]
                    cmd += ["-n", str(args.workers), prog, str(res.n)]
                    run = run_once(cmd, args.timeout, workdir, run_env, keep)
                    res.series[transport].runs.append(run)
                    notes = [run.error] if run.error else []
                    if prefix:
                        left = server.keys(f"{prefix}:*")
                        if left:
                            res.left_keys.append(f"{prefix}: {len(left)} key(s) {left[:5]}")
                            notes.append(f"{len(left)} key(s) left under {prefix}: {left[:5]}")
                            server.delete(left)  # the next runs start clean
                    progress(rep, args.repeat, name, transport, run, notes)
        left_at_end = server.keys()
    finally:
        server.close()
        kill_orphans()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    for line in table(results, args.markdown):
        print(line)
    print()
    failed = below = False
    for name, res in results.items():
        expected = str(res.n * (res.n - 1) // 2)
        sums = {str(r.checksum) for s in res.series.values() for r in s.good()}
        if sums - {expected}:
            failed = True
            print(f"{name}: wrong checksum(s) {sorted(sums - {expected})}, expected {expected}")
        failed = report_failures(name, res.series) or failed
        for entry in res.left_keys:
            print(f"{name} under redis: keys left after the run: {entry}")
        r = res.ratio()
        if r is not None:
            verdict = "meets" if r >= BAR else "MISSES"
            below = below or r < BAR
            print(
                f"{name}: Redis reaches {r:.2f} of ZeroMQ's throughput ({verdict} the bar of {BAR})"
            )
    if left_at_end:
        print(f"keys in the Redis server at the end: {len(left_at_end)} {left_at_end[:10]}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **machine(args.workers),
                    "runs": {
                        n: {
                            "n": res.n,
                            "left_keys": res.left_keys,
                            **{t: [r.__dict__ for r in s.runs] for t, s in res.series.items()},
                        }
                        for n, res in results.items()
                    },
                },
                indent=2,
            )
        )
    return 1 if failed or (args.check and below) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the Redis server and every run are gone by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
