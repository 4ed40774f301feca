"""Large arrays between the processes of one host go through shared memory
(memfds): they arrive whole and writable, and a run killed anywhere leaves
no shared memory behind, neither in /dev/shm nor held by any process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import kill_run, processes_of, program_results, wait_for, wait_gone

from scoop_core import shared_frames

PRELUDE = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from scoop import futures

def out(value):
    print("RESULT " + json.dumps(value), flush=True)

def in_shared_memory(array):
    # Whether the array's memory is a mapping of a shared frame.
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:scoop-frame" in line:
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if low <= address < high:
                    return True
    return False

ITEMS = (8 << 20) // 8  # 8 MiB of float64
"""

# Every future on a worker, so that each array crosses between processes.
ON_WORKERS = {"SCOOP_ROOT_RUNS_FUTURES": "0"}

ROUND_TRIP = """
def double(array):
    there = in_shared_memory(array)
    array *= 2  # the argument is writable
    return array, there

if __name__ == "__main__":
    arrays = [np.arange(ITEMS, dtype=np.float64) + k for k in range(4)]
    results = list(futures.map(double, arrays))
    back = [r[0] for r in results]
    doubled = all(np.array_equal(b, (np.arange(ITEMS) + k) * 2) for k, b in enumerate(back))
    kept = all(np.array_equal(a, np.arange(ITEMS) + k) for k, a in enumerate(arrays))
    for b in back:
        b += 1  # the result is writable
    out({
        "doubled": doubled,
        "kept": kept,
        "shared_there": [r[1] for r in results],
        "shared_back": [in_shared_memory(b) for b in back],
    })
"""


@pytest.mark.both_transports
@pytest.mark.parametrize("setting", ["true", "false"])
def test_large_arrays_arrive_whole_and_writable_both_ways(program, scoop_run, transport, setting):
    proc = scoop_run(program(ROUND_TRIP), env={**ON_WORKERS, "SCOOP_SHARED_MEMORY": setting})
    [got] = program_results(proc)
    assert got["doubled"] and got["kept"]
    # Through Redis, payloads go as bytes: what a store holds may be read anywhere.
    on = setting == "true" and transport == "zmq"
    assert got["shared_there"] == [on] * 4
    assert got["shared_back"] == [on] * 4


def test_shared_memory_false_in_scoop_toml_keeps_every_frame_in_the_messages(
    program, scoop_run, tmp_path
):
    # The launcher passes the setting to the root and the workers, and the
    # broker then sends none of them a handle either.
    (tmp_path / "scoop.toml").write_text("[scoop]\nshared_memory = false\n")
    [got] = program_results(scoop_run(program(ROUND_TRIP), env=ON_WORKERS))
    assert got["doubled"] and got["kept"]
    assert got["shared_there"] == [False] * 4
    assert got["shared_back"] == [False] * 4


CONSTANT = """
from scoop import shared

def total(_):
    table = shared.getConst("table")
    return float(table.sum()), in_shared_memory(table)

if __name__ == "__main__":
    shared.setConst(table=np.ones(ITEMS))
    out(list(futures.map(total, range(4))))
"""


def test_a_large_constant_reaches_every_worker_through_shared_memory(program, scoop_run):
    got = program_results(scoop_run(program(CONSTANT), env=ON_WORKERS))
    assert got == [[[float(8 << 20) / 8, True]] * 4]


HOLDING = """
def hold(array, folder):
    Path(folder, f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not Path(folder, "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("never told to go on")
        time.sleep(0.01)
    return float(array[-1])

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    fs = [futures.submit(hold, np.full(ITEMS, float(k)), str(folder)) for k in range(4)]
    print("READY", os.getpid(), flush=True)
    out([f.result() for f in fs])
"""


def _frames_held(pids: list[int]) -> set[int]:
    """Inodes of the shared frames that processes ``pids`` hold, open or mapped."""
    found = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                path = f"/proc/{pid}/fd/{fd}"
                if os.readlink(path).startswith(f"/memfd:{shared_frames.MEMFD_NAME}"):
                    found.add(os.stat(path).st_ino)
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    if f"memfd:{shared_frames.MEMFD_NAME}" in line:
                        found.add(int(line.split()[4]))
        except OSError:
            continue  # gone, or not ours to read
    return found


def _every_process() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@pytest.mark.parametrize("victim", ["worker", "root", "launcher"])
def test_a_run_killed_anywhere_leaves_no_shared_memory(program, tmp_path, victim):
    prog = program(HOLDING)
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "2", str(prog), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        # No future waits on a worker beyond the one it runs: each worker runs one.
        env={**os.environ, **ON_WORKERS, "SCOOP_PREFETCH": "0"},
    )
    try:
        assert proc.stdout is not None
        root_pid = int(proc.stdout.readline().split()[1])
        wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2, "both workers holding")
        held = _frames_held(processes_of(str(prog)))
        assert held, "the run's arrays did not go through shared memory"
        if victim == "worker":
            worker = int(next(tmp_path.glob("started-*")).name.split("-")[1])
            os.kill(worker, signal.SIGKILL)
            (tmp_path / "go").touch()
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert out.splitlines()[-1] == "RESULT [0.0, 1.0, 2.0, 3.0]"
        elif victim == "root":
            os.kill(root_pid, signal.SIGKILL)
            assert proc.wait(30) == 128 + signal.SIGKILL
        else:
            proc.kill()
            proc.wait(10)
        assert wait_gone(str(prog), 30) == []
        deadline = time.monotonic() + 10
        while _frames_held(_every_process()) & held:
            assert time.monotonic() < deadline, "a process still holds a frame of the run"
            time.sleep(0.05)  # polling other processes' /proc entries
        assert set(os.listdir("/dev/shm")) - shm_before == set()
    finally:
        kill_run(str(prog), proc)
