"""``scoop status [RUN_ID]``: what a running run is doing, asked from outside it.

With no run id, the user's running runs, from their registrations
(:mod:`scoop_core.run_registry`). With one, the run's workers and futures
(:func:`scoop_core.run_tables.status`), read where the run keeps them:

- A hub-based run (ZeroMQ) keeps them in its broker, a thread of the
  launcher that only the run's key can talk to. ``scoop status`` finds the
  broker's address and the key in the run's registration, so it works on
  the machine that started the run, and sends one
  :class:`~scoop_core.messages.StatusRequest` signed with the key on a
  connection of its own. The broker answers on that connection and ends
  the request's session (a replay gets nothing); the asker never joins the
  run. No answer within :data:`ANSWER_TIMEOUT` is an error: a broker that
  is alive answers in milliseconds.
- A store-backed run (Redis) keeps every process's newest report in the
  store, signed with the run's key, so any machine that reaches the store
  and holds the key can read them: the registration's address if this
  user's launcher runs here, else the server of the configuration or
  ``--url``, with the key from ``--key-file``, ``$SCOOP_RUN_KEY`` or
  ``~/.scoop/runs/RUN.key``. It only reads: no record, flag, index or
  mailbox is written, and a record that fails its check (a wrong key) is
  left where it is -- the run's own processes are the ones to judge it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from scoop_core import messages as m
from scoop_core import run_keys, run_registry, run_tables
from scoop_core.broker import supported
from scoop_core.errors import LaunchError, ProtocolError
from scoop_core.interfaces import StoreTransport, Transport
from scoop_core.run_activity import RunActivity, RunSnapshot, unpack_snapshot
from scoop_core.run_backend import INFO

log = logging.getLogger("scoop.launcher")

ANSWER_TIMEOUT = 2.0
"""Seconds a run's broker has to answer a status request."""


def main(options: argparse.Namespace) -> int:
    """``scoop status [RUN_ID] [--url URL] [--key-file F] [--json]``."""
    as_json = bool(getattr(options, "json", False))
    if not options.run_id:
        runs = run_registry.running_runs()
        if as_json:
            print(json.dumps([_shown_entry(e) for e in runs], indent=2))
        else:
            print(runs_table(runs) if runs else "no running runs")
        return 0
    snapshot = read_status(options)
    if as_json:
        print(json.dumps(dataclasses.asdict(snapshot), indent=2))
    else:
        print(run_tables.status(snapshot))
    return 0


def _shown_entry(entry: run_registry.RunEntry) -> dict[str, Any]:
    """A registration as ``--json`` shows it: without the key or the transport's settings."""
    fields = dataclasses.asdict(entry)
    for secret in ("key", "settings", "pid_started", "boot"):
        del fields[secret]
    return fields


def runs_table(runs: list[run_registry.RunEntry]) -> str:
    """The user's running runs, one a line."""
    rows = [
        [
            e.run_id,
            e.transport,
            os.path.basename(e.program) or "-",
            str(e.workers),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started)),
            e.host,
            str(e.pid),
        ]
        for e in runs
    ]
    header = ["run id", "transport", "program", "workers", "started", "host", "launcher pid"]
    return run_tables.table(header, rows, right={3, 6})


def _running_list() -> str:
    """The user's running runs, for an error about another."""
    runs = run_registry.running_runs()
    if not runs:
        return "you have no running runs"
    return "your running runs: " + ", ".join(f"{e.run_id} ({e.transport})" for e in runs)


def read_status(options: argparse.Namespace) -> RunSnapshot:
    """The snapshot of run ``options.run_id``; LaunchError naming the run and why if none."""
    from scoop_core.cli import _configure

    run_id = options.run_id
    cli: dict[str, Any] = {}
    if getattr(options, "transport", None):
        cli["transport"] = options.transport
    if options.url:
        first, _ = _configure(options, cli)
        cli[f"transport.{first['transport']}.url"] = options.url
    config, plugins = _configure(options, cli)
    entry = run_registry.find(run_id)
    if entry is not None and not cli:
        # Where the run's launcher found its server, whatever the config says now.
        name, settings = entry.transport, entry.settings
    else:
        name = config["transport"]
        settings = config.section(f"transport.{name}")
        entry = entry if entry is not None and entry.transport == name else None
    transport = plugins.transport(name).factory(settings)
    if entry is not None and not entry.alive():
        run_registry.forget(entry)
        if not isinstance(transport, StoreTransport):
            raise LaunchError(
                f"run {run_id} is not running: its launcher (pid {entry.pid}) has exited; "
                + _running_list()
            )
        entry = None  # a store may keep a run that outlives its launcher

    def key() -> bytes:
        if not options.key_file and entry is not None and entry.key:
            return bytes.fromhex(entry.key)
        try:
            return run_keys.find_run_key(run_id, options.key_file)
        except ValueError as exc:
            said = str(exc)
            raise LaunchError(said if run_id in said else f"run {run_id}: {said}") from None

    if isinstance(transport, StoreTransport):
        return read_store(
            transport,
            name,
            run_id,
            key,
            address=entry.address if entry is not None else None,
            started=entry.started if entry is not None else None,
        )
    if entry is None:
        raise LaunchError(
            f"no running run {run_id} of yours on this machine: a {name} run answers "
            f"scoop status on the machine that started it; {_running_list()}"
        )
    return ask_broker(transport, entry, key())


def ask_broker(transport: Transport, entry: run_registry.RunEntry, key: bytes) -> RunSnapshot:
    """The snapshot the broker of the run ``entry`` registers sends back."""
    identity = f"status-{secrets.token_hex(8)}".encode()
    codec = m.Codec(key, identity)
    connect = transport.connect
    try:
        endpoint = connect(entry.address, identity=identity, **supported(connect, key=key))
    except ValueError as exc:
        raise LaunchError(f"cannot reach run {entry.run_id}: {exc}") from None
    try:
        endpoint.send(codec.encode(m.StatusRequest(0)))
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            frames = endpoint.recv(left)
            if frames is None:
                continue
            try:
                reply = codec.decode(frames, m.BROKER_IDENTITY)
            except ProtocolError as exc:
                raise LaunchError(
                    f"run {entry.run_id} sent an answer that fails its check: {exc}"
                ) from None
            if isinstance(reply, m.StatusReply):
                try:
                    return unpack_snapshot(reply.status)
                except ProtocolError as exc:
                    raise LaunchError(f"run {entry.run_id}: {exc}") from None
        raise LaunchError(
            f"run {entry.run_id} (launcher pid {entry.pid}) did not answer within "
            f"{ANSWER_TIMEOUT:g} s: the key is not the run's (its broker ignores a request "
            "it cannot check), or the launcher is stopped or stuck"
        )
    finally:
        endpoint.close()


def read_store(
    transport: StoreTransport,
    name: str,
    run_id: str,
    key: Callable[[], bytes],
    *,
    address: str | None = None,
    started: float | None = None,
) -> RunSnapshot:
    """The snapshot of run ``run_id`` from the reports in its store (at
    ``address``, else looked up by id on the transport's server); only reads."""
    from scoop_core import store_records as records

    identity = f"status-{os.getpid()}"
    if address is not None:
        try:
            store = transport.open_store(address=address, identity=identity)
        except ValueError as exc:
            raise LaunchError(f"cannot read run {run_id}: {exc}") from None
    else:
        store = transport.open_store(run_id=run_id, identity=identity)
    try:
        blob = store.records(records.RUN).get(INFO)
        if blob is None:
            raise LaunchError(
                f"there is no run {run_id} at {store.address}: it has ended, or the run id or "
                f"server is wrong (scoop run -v prints the run id); {_running_list()}"
            )
        run_key = key()
        try:
            records.read_info(blob, run_key)
        except ValueError:
            raise LaunchError(
                f"the key is not run {run_id}'s: the run's description fails its check with "
                "it. Nothing of the run was read or changed; give the run's key with "
                f"--key-file or ${run_keys.KEY_ENV}"
            ) from None
        activity = RunActivity(run_id, name, heartbeat_timeout=math.inf)
        server = store.server_time()
        unreadable = records.read_reports(
            store,
            run_key,
            activity,
            trace=False,
            now_ns=server if server is not None else time.time_ns(),
            reader=True,
        )
        # Reports come when something changed: a quiet process is known
        # alive by the flag it raises every heartbeat, not by its report.
        for peer, counters in activity.reports().items():
            if not counters.get("final") and not store.flagged(records.alive_flag(peer)):
                activity.lost(peer)
        if not store.flagged(records.alive_flag(records.LAUNCHER)):
            log.warning(
                "run %s: its launcher has not been heard from for a heartbeat timeout; "
                "the run ends when its program sees that",
                run_id,
            )
    finally:
        store.close()
    snapshot = activity.snapshot()
    if started is not None:
        elapsed = time.time() - started
    else:
        elapsed = max((p.alive + p.last_heard for p in snapshot.processes), default=0.0)
    if unreadable:
        log.warning("run %s: %d report(s) that fail their check were not read", run_id, unreadable)
    return dataclasses.replace(snapshot, elapsed=elapsed)
