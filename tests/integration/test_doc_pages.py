"""Every example on every documentation page runs, and prints what the page says.

The pages are ``README.md`` and ``docs/**/*.md``. A page's fenced blocks are
its examples when their language is ``python``, ``console``, ``sh``,
``bash`` or ``toml``; other blocks (``text``, ``json``, none) show output
or formats and are not run. Each page runs in a directory of its own, with
a home directory of its own, ``examples/`` of this repository beside it,
the test environment's ``python`` and ``scoop`` first on ``PATH``, no
``SCOOP_*`` variable, and ``SCOOP_TRANSPORT_REDIS_URL`` naming a throw-away
redis-server (so the Redis pages run as a user who exported it, as they
say to). Its blocks are taken in order:

- a ``python`` or ``toml`` block starts with a comment naming its file
  (``# prog.py``, ``# scoop.toml``, ``# ~/.config/scoop/scoop.toml: yours``),
  which is written (``~`` is the page's home directory; an absolute path is
  taken under the page's directory, and the site file ``/etc/scoop/scoop.toml``
  written there is the one the page's commands read); a ``python`` one
  whose first line goes on ``-- run with: COMMAND`` is run with it, and
  must succeed;
- a ``toml`` block must parse (whether scoop accepts it is shown by the
  commands after it);
- a ``sh`` or ``bash`` block is a script, run with ``set -e``: it must
  succeed (a ``pip install`` is what the test environment already did, so
  it is skipped, alone or before ``&&``);
- a ``console`` block holds commands (``$ ...``, continued by a trailing
  backslash) each followed by what it prints (stdout and stderr, as a
  terminal shows them). A line ``...`` stands for any number of lines, and
  ``...`` inside a line for any text; runs of spaces match any run of
  spaces (a table's columns are as wide as what they hold).

A block that needs what this suite cannot start (sshd hosts, a scheduler)
is run by a test of the cluster suite: an HTML comment right before it,
``<!-- example run by tests/PATH.py -->``, names that test file, which must
read this page. The same comment before a page's first heading hands all
of its blocks over. The README's test command is run by ``.ci/run``, which
checks that the README holds it word for word.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import environ_without_scoop

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
EXAMPLE_LANGUAGES = {"python", "console", "sh", "bash", "toml"}
DELEGATED = re.compile(r"<!-- example run by (tests/[\w/.-]+\.py|\.ci/run) -->")
FILE_HEADER = re.compile(
    r"#\s*(?P<path>[\w./~-]+\.(?:py|toml|txt|cfg|json|csv))"
    r"(?:\s+--\s+run with:\s*(?P<command>.+)|[\s:(].*)?"
)
SITE_FILE = "/etc/scoop/scoop.toml"
COMMAND_TIMEOUT = 180


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, counting from 1
    language: str
    text: str
    delegated_to: str | None  # a test file that runs it instead

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order (fences may be indented, in lists)."""
    lines = page.read_text().splitlines()
    whole_page = _page_delegate(lines)
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+)\s*([\w-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = DELEGATED.fullmatch(before)
        found.append(
            Block(
                page=page,
                line=i + 1,
                language=language.lower(),
                text="\n".join(body) + "\n",
                delegated_to=marker.group(1) if marker else whole_page,
            )
        )
        i = end + 1
    return found


def _page_delegate(lines: list[str]) -> str | None:
    for line in lines:
        if line.startswith("#"):
            return None
        marker = DELEGATED.fullmatch(line.strip())
        if marker:
            return marker.group(1)
    return None


def examples(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language in EXAMPLE_LANGUAGES]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the page's directory and environment --------------------------------------


@pytest.fixture
def page_dir(tmp_path: Path, redis_server_url: str) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = environ_without_scoop()
    # The page's own home holds its user file; its site file is the one it writes, if any.
    for name in ("XDG_CONFIG_HOME", "VIRTUAL_ENV_PROMPT", "SCOOP_USER_CONFIG"):
        env.pop(name, None)
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        SCOOP_TRANSPORT_REDIS_URL=redis_server_url,
        COLUMNS="100",
    )
    return work, env


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _without_install(command: str) -> str:
    """``pip install ... && rest`` is ``rest``; a lone ``pip install`` is nothing."""
    parts = [p.strip() for p in command.split("&&")]
    return " && ".join(p for p in parts if not p.startswith("pip install"))


# -- what each kind of block does -------------------------------------------


def _write_file(block: Block, work: Path, env: dict[str, str]) -> tuple[Path, str | None]:
    first = block.text.splitlines()[0] if block.text.strip() else ""
    header = FILE_HEADER.fullmatch(first.strip())
    assert header, (
        f"{block.where()}: a {block.language} example starts with a comment naming its file "
        f"(# prog.py, or # prog.py -- run with: python -m scoop -n 2 prog.py); it starts {first!r}"
    )
    name = header.group("path")
    if name.startswith("~/"):
        path = Path(env["HOME"]) / name[2:]
    elif name.startswith("/"):
        path = work / "_root" / name.lstrip("/")
        if name == SITE_FILE:
            env["SCOOP_SITE_CONFIG"] = str(path)
    else:
        path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)
    return path, header.group("command")


def _check_toml(block: Block) -> None:
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where()}: not valid TOML: {exc}")


def _run_script(block: Block, work: Path, env: dict[str, str]) -> None:
    script = "\n".join(_without_install(line) for line in block.text.splitlines())
    proc = _run("set -e\n" + script, work, env)
    assert proc.returncode == 0, (
        f"{block.where()}: the script failed ({proc.returncode}):\n{proc.stdout}"
    )


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` for each ``$`` command of a console block."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            assert not steps and not line.strip(), f"output before any command: {line!r}"
            i += 1
            continue
        command = line[2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]  # bash reads the backslash-newline as a space
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and not output[-1].strip():
            output.pop()
        steps.append((command, output))
    return steps


def matches(expected: list[str], actual: list[str]) -> bool:
    """Lines equal, but for ``...``: a whole line of it is any lines, inside a line any text."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.strip().split("..."))
    pattern = re.sub(r"(?:\\ )+", " +", pattern)  # re.escape writes a space as "\ "
    return re.fullmatch(pattern, actual[0].strip()) is not None and matches(rest, actual[1:])


def _run_console(block: Block, work: Path, env: dict[str, str]) -> None:
    steps = console_steps(block.text)
    assert steps, f"{block.where()}: a console block shows at least one '$ command'"
    for command, expected in steps:
        proc = _run(_without_install(command), work, env)
        actual = proc.stdout.splitlines()
        while actual and not actual[-1].strip():
            actual.pop()
        assert matches(expected, actual), (
            f"{block.where()}: `{command}` printed (status {proc.returncode}):\n{proc.stdout}\n"
            f"the page says:\n" + "\n".join(expected)
        )
        if proc.returncode != 0 and not expected:
            pytest.fail(f"{block.where()}: `{command}` failed ({proc.returncode}):\n{proc.stdout}")


def run_page(page: Path, work: Path, env: dict[str, str]) -> int:
    """Run the page's own examples in ``work``; how many ran."""
    ran = 0
    unused: dict[Block, set[str]] = {}  # python files nothing ran yet: their file and module names
    for block in examples(page):
        if block.delegated_to:
            continue
        ran += 1
        for written, names in list(unused.items()):
            if any(re.search(rf"\b{re.escape(n)}\b", block.text) for n in names):
                del unused[written]
        if block.language in ("python", "toml"):
            path, command = _write_file(block, work, env)
            if block.language == "toml":
                _check_toml(block)
            elif not command:
                name = str(path.relative_to(work))
                unused[block] = {name, name.removesuffix(".py").replace("/", ".")}
            else:
                proc = _run(command, work, env)
                assert proc.returncode == 0, (
                    f"{block.where()}: `{command}` failed ({proc.returncode}):\n{proc.stdout}"
                )
        elif block.language == "console":
            _run_console(block, work, env)
        else:
            _run_script(block, work, env)
    leftover = sorted(b.where() for b in unused)
    assert not leftover, (
        f"python examples that nothing on the page runs or imports: {', '.join(leftover)}; "
        "add '-- run with: COMMAND' to their first line, or run them in a later block"
    )
    return ran


RUN_HERE = [p for p in PAGES if any(not b.delegated_to for b in examples(p))]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", RUN_HERE, ids=_page_id)
def test_the_examples_of_the_page_run(page: Path, page_dir: tuple[Path, dict[str, str]]) -> None:
    work, env = page_dir
    assert run_page(page, work, env) > 0


DELEGATIONS = sorted(
    {(b.page, b.delegated_to) for p in PAGES for b in examples(p) if b.delegated_to}
)


@pytest.mark.parametrize(
    ("page", "test_file"), DELEGATIONS, ids=[f"{_page_id(p)}->{t}" for p, t in DELEGATIONS]
)
def test_a_handed_over_example_is_read_by_its_test(page: Path, test_file: str) -> None:
    """The test file a page hands its examples to exists and reads that page."""
    path = ROOT / test_file
    assert path.is_file(), f"{_page_id(page)} hands examples to {test_file}, which does not exist"
    assert page.name in path.read_text(), f"{test_file} does not read {_page_id(page)}"


# -- the runner's own rules ----------------------------------------------------


def test_matching_output_with_ellipses() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "b"], ["a", "b"])
    assert matches(["run ... (zmq): ...s"], ["run 8928f0bbb740 (zmq): 0.52s"])
    assert not matches(["a", "d"], ["a", "b", "d"])
    assert not matches(["a"], ["a", "b"])
    assert not matches(["run ... (redis)"], ["run 1 (zmq)"])
    assert matches(["workers   8  scoop.toml:3"], ["workers 8       scoop.toml:3"])
    assert not matches(["workers 8"], ["workers8"])


def test_console_steps_read_commands_and_their_output() -> None:
    text = "$ scoop plugins \\\n  --help\nline 1\n\n$ true\n"
    assert console_steps(text) == [("scoop plugins \\\n  --help", ["line 1"]), ("true", [])]
    proc = _run(console_steps("$ echo one \\\n  two\n")[0][0], Path.cwd(), dict(os.environ))
    assert proc.stdout == "one two\n"


def test_a_file_header_names_the_file_and_the_command() -> None:
    header = FILE_HEADER.fullmatch("# prog.py -- run with: python -m scoop -n 2 prog.py")
    assert header and header.groups() == ("prog.py", "python -m scoop -n 2 prog.py")
    assert shlex.split(header.group(2))[0] == "python"
    site = FILE_HEADER.fullmatch("# /etc/scoop/scoop.toml: the administrator's")
    assert site and site.groups() == (SITE_FILE, None)
    assert not FILE_HEADER.fullmatch("# results as they come, in any order")
