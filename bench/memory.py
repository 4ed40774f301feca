"""Does memory stay flat over a million futures? (issue 3, item 4)

Runs a program through the real launcher (``python -m scoop -n 2 prog.py``)
that submits small futures in batches (``--rounds`` rounds of
``--batch`` ``futures.submit`` calls, each collected with ``.result()``) and
then maps over ``--map-items`` items with ``futures.map``. It samples the
resident set size (``VmRSS`` in ``/proc/<pid>/status``) of:

- the launcher, which hosts the broker in one of its threads (the root's
  parent, ``os.getppid()`` in the root);
- the root, the process running the program;
- the workers (the launcher's other children), for information only;

after a few warm-up rounds (``--warmup-rounds``, not counted), every few
rounds, and at the end. It prints a table (RSS after warm-up, at the end,
growth, growth per call) and exits with status 1 if the launcher's or the
root's growth exceeds both ``--max-growth-mib`` and ``--max-growth-pct`` of
its warm-up size (the bound is the larger of the two): a leak of
per-future bookkeeping (a few hundred bytes per finished future) would grow
by hundreds of MiB over a million futures, while allocator noise stays
within a few MiB.

How many futures the broker still records cannot be seen from outside the
launcher process, so it is not reported; a leak of its records shows as
growth of the launcher.

    python bench/memory.py                    # 100 x 10,000 submits + a map of 1,000,000
    python bench/memory.py --rounds 20 --batch 5000 --map-items 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PROGRAM = textwrap.dedent(
    """
    import gc, json, os, sys, time
    from scoop import futures

    def inc(x):
        return x + 1

    def rss_kib(pid):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def workers(launcher):
        kids = []
        try:
            for task in os.listdir(f"/proc/{launcher}/task"):
                with open(f"/proc/{launcher}/task/{task}/children") as fh:
                    kids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        return sorted(set(kids) - {os.getpid()})

    def sample(label, done, started):
        gc.collect()
        launcher = os.getppid()
        row = {
            "label": label,
            "futures": done,
            "seconds": time.monotonic() - started,
            "launcher": rss_kib(launcher),
            "root": rss_kib(os.getpid()),
            "workers": [rss_kib(p) for p in workers(launcher)],
        }
        print("SAMPLE " + json.dumps(row), flush=True)

    def submit_round(batch, base):
        fs = [futures.submit(inc, base + i) for i in range(batch)]
        total = sum(f.result() for f in fs)
        expected = batch * base + batch * (batch - 1) // 2 + batch
        if total != expected:
            raise SystemExit(f"wrong sum {total}, expected {expected}")

    if __name__ == "__main__":
        rounds, batch, map_items, every, warmup = (int(a) for a in sys.argv[1:6])
        started = time.monotonic()
        # Warm-up: a few rounds of each kind, so that caches, allocator
        # arenas, socket buffers and the chunk-size estimate reach their
        # working size before the first measurement.
        for _ in range(warmup):
            submit_round(batch, 0)
            if sum(futures.map(inc, range(batch))) != batch * (batch + 1) // 2:
                raise SystemExit("wrong map sum in warm-up")
        sample("warm-up", 0, started)
        started = time.monotonic()
        done = 0
        for r in range(rounds):
            submit_round(batch, done)
            done += batch
            if every and (r + 1) % every == 0 and r + 1 < rounds:
                sample(f"round {r + 1}", done, started)
        submit_seconds = time.monotonic() - started
        sample("after submits", done, started)
        t = time.monotonic()
        total = sum(futures.map(inc, range(map_items)))
        if total != map_items * (map_items + 1) // 2:
            raise SystemExit(f"wrong map sum {total}")
        map_seconds = time.monotonic() - t
        sample("end", done + map_items, started)
        print("TIMES " + json.dumps({"submit": submit_seconds, "map": map_seconds}), flush=True)
    """
)


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = [int(p) for p in fh.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a run that overstayed: SIGTERM lets the launcher stop what it
    started; whatever is still there after 10 s is killed."""
    others = _descendants(proc.pid)
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    for pid in others:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="scoop-memory-") as tmp:
        prog = Path(tmp) / "memory_prog.py"
        prog.write_text(PROGRAM)
        cmd = [
            sys.executable,
            "-m",
            "scoop",
            "-n",
            str(args.workers),
            str(prog),
            str(args.rounds),
            str(args.batch),
            str(args.map_items),
            str(args.sample_every),
            str(args.warmup_rounds),
        ]
        print(
            f"running {args.rounds} x {args.batch:,} submits and a map of {args.map_items:,} "
            f"items on {args.workers} workers (timeout {args.timeout:g} s)",
            flush=True,
        )
        started = time.monotonic()
        # Its own session, so a timeout kills the launcher and everything it started.
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            print(f"FAILED: the run took longer than {args.timeout:g} s and was stopped")
            return 1
        finally:
            if proc.poll() is None:
                _stop(proc)
        wall = time.monotonic() - started

    samples = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("SAMPLE ")]
    times = next((json.loads(x[6:]) for x in out.splitlines() if x.startswith("TIMES ")), None)
    if proc.returncode != 0 or times is None or len(samples) < 2:
        print(f"FAILED: the run exited with status {proc.returncode}\n{out}\n{err}")
        return 1

    print("\nsamples (RSS in MiB):")
    print(f"  {'when':<14} {'calls':>10} {'seconds':>8} {'launcher':>9} {'root':>7}  workers")
    for s in samples:
        workers = " ".join(_mib(w) for w in s["workers"])
        print(
            f"  {s['label']:<14} {s['futures']:>10,} {s['seconds']:>8.1f} "
            f"{_mib(s['launcher']):>9} {_mib(s['root']):>7}  {workers}"
        )

    warm, end = samples[0], samples[-1]
    submitted = args.rounds * args.batch
    print(
        f"\n{submitted:,} submitted futures in {times['submit']:.1f} s "
        f"({submitted / times['submit']:,.0f}/s); map of {args.map_items:,} items in "
        f"{times['map']:.1f} s; whole run {wall:.1f} s"
    )
    total = submitted + args.map_items
    print(
        "\n| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth (MiB) | growth "
        "| bytes per call |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    failed = []
    rows = [("launcher + broker", warm["launcher"], end["launcher"], True)]
    rows.append(("root", warm["root"], end["root"], True))
    for i, (a, b) in enumerate(zip(warm["workers"], end["workers"], strict=False)):
        rows.append((f"worker {i + 1} (info)", a, b, False))
    for name, before, after, checked in rows:
        if before is None or after is None:
            print(f"| {name} | {_mib(before)} | {_mib(after)} | ? | ? | ? |")
            continue
        growth_mib = (after - before) / 1024
        growth_pct = 100.0 * (after - before) / before
        print(
            f"| {name} | {before / 1024:.1f} | {after / 1024:.1f} | "
            f"{growth_mib:+.1f} | {growth_pct:+.1f} % | {1024 * (after - before) / total:+.1f} |"
        )
        if checked and growth_mib > args.max_growth_mib and growth_pct > args.max_growth_pct:
            failed.append(f"{name} grew by {growth_mib:.1f} MiB ({growth_pct:.0f} %)")
    print(
        "\nfutures still recorded by the broker at the end: not observable from outside "
        "the launcher process (a leak there shows as launcher growth)"
    )
    if failed:
        print(
            f"\nFAILED: memory is not flat (bound: more than {args.max_growth_mib:g} MiB "
            f"and {args.max_growth_pct:g} %): " + "; ".join(failed)
        )
        return 1
    print(
        f"\nOK: launcher and root grew less than {args.max_growth_mib:g} MiB "
        f"(or {args.max_growth_pct:g} %) after warm-up"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--rounds", type=int, default=100, help="submit rounds (default 100)")
    parser.add_argument("--batch", type=int, default=10_000, help="submits per round")
    parser.add_argument("--map-items", type=int, default=1_000_000, help="items of the map")
    parser.add_argument("--sample-every", type=int, default=20, help="rounds between samples")
    parser.add_argument(
        "--warmup-rounds", type=int, default=5, help="rounds before the first sample (default 5)"
    )
    parser.add_argument("--max-growth-mib", type=float, default=30.0)
    parser.add_argument("--max-growth-pct", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the run")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
