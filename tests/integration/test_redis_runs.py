"""The seed's examples run over the Redis transport and leave nothing in Redis.

Each run is ``python -m scoop --transport redis -n 2 examples/NAME.py`` with
``SCOOP_TRANSPORT_REDIS_URL`` pointing at a redis-server started for this
module (never the one on 6379) and a key prefix of its own; the printed
results are checked as in ``test_examples.py``, and afterwards no key under
that prefix may be left. The server starter and the result checks are
loaded by path, since test directories here are not packages.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis
from conftest import environ_without_scoop

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


servers = _load(HERE.parent / "plugins" / "transport_redis" / "conftest.py", "_scoop_redis_servers")
examples = _load(HERE / "test_examples.py", "_scoop_example_checks")

CASES = [
    case
    for case in examples.CASES
    if case.name
    in {"map_abs.py", "map_reduce.py", "shared_constants.py", "full_tree.py", "fibonacci.py"}
]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with servers.start_redis() as url:
        yield url


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_example_runs_over_redis(case: object, redis_url: str, tmp_path: Path) -> None:
    prefix = f"scoop-test-{uuid.uuid4().hex[:8]}"
    env = environ_without_scoop()
    env["SCOOP_TRANSPORT_REDIS_URL"] = redis_url
    env["SCOOP_TRANSPORT_REDIS_PREFIX"] = prefix
    proc = subprocess.run(
        [sys.executable, "-m", "scoop", "--transport", "redis", "-n", "2"]
        + [str(examples.EXAMPLES / case.name), *case.args],  # type: ignore[attr-defined]
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=examples.TIMEOUT,
    )
    assert examples.processes_in(tmp_path) == [], "processes of the run were left running"
    assert proc.returncode == case.status, examples.described(proc)  # type: ignore[attr-defined]
    case.check(proc.stdout, proc.stderr)  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_url)
    try:
        left = list(client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()
    assert left == [], f"keys of the run left in Redis: {left}"
