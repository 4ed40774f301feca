"""A run's key: where a new run gets it, the key files in ``~/.scoop``, and reading them back.

A new run's key is ``$SCOOP_RUN_KEY`` if the user set it (:data:`KEY_ENV`,
which ``scoop worker`` reads too), else a new random one
(:func:`launcher_key`).

``scoop run`` over a transport whose server keeps the run (Redis) writes the
run's key to ``~/.scoop/runs/RUN.key``, where ``scoop worker`` on a machine
sharing the home directory finds it. Whoever reads that file can run code in
every process of the run, so:

- Every directory made under ``~/.scoop`` (and ``~/.scoop`` itself) is 0700,
  whatever the umask. One found open to other users is made 0700, with a
  warning naming it: the user once loosened it, and anything others planted
  in it meanwhile is caught by the checks below. One that belongs to another
  user is refused: it is not ours to fix, and they can change it at will.
- A key file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600: a
  file or symbolic link already at its path is never written through (a
  stale key file of our own from a launcher that died is replaced; anything
  else is refused with an error naming it).
- A key file is read only if it is a regular file (no symlink at the final
  component of our own path, no FIFO that would block the reader), owned by
  this user and with no permission for group or others -- ssh's rule for
  private keys. :func:`read_private_file` is that check, for any secret file.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from scoop_core.errors import LaunchError

log = logging.getLogger("scoop.launcher")

KEY_ENV = "SCOOP_RUN_KEY"
"""An environment variable holding a run's key (hex), for launcher and workers alike."""


def scoop_home() -> Path:
    """``~/.scoop`` (not created)."""
    return Path.home() / ".scoop"


def key_file(run_id: str) -> Path:
    """Where ``scoop run`` leaves a run's key for ``scoop worker``, on a
    shared-storage home directory typically seen by every node."""
    return scoop_home() / "runs" / f"{run_id}.key"


def _not_yours(path: Path | str, info: os.stat_result) -> str:
    """Empty if this user owns ``path`` (``info`` is its stat), else the start
    of an error that names its owner."""
    me = os.geteuid()
    if info.st_uid == me:
        return ""
    return f"{path} belongs to uid {info.st_uid}, not to you (uid {me})"


def private_dir(path: Path, top: Path | None = None) -> Path:
    """Make ``path`` (and its missing parents) a directory only this user can use.

    Each directory from ``top`` (default: ``path`` alone) down to ``path`` is
    created 0700 if missing, made 0700 if it is ours and open to others (a
    warning says so), and refused with :class:`LaunchError` if it belongs to
    another user or is not a directory."""
    top = path if top is None else top
    chain = [path, *path.parents]
    if top not in chain:
        raise ValueError(f"{top} is not {path} or one of its parents")
    for directory in reversed(chain[: chain.index(top) + 1]):
        if not directory.parent.is_dir():
            directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            _check_dir(directory)
        else:
            os.chmod(directory, 0o700)  # whatever the umask
    return path


def _check_dir(directory: Path) -> None:
    # A symlink here was put by someone who can write the parent: the user
    # (or root), or an intruder whose link we then check the target of.
    try:
        info = directory.stat()
    except OSError as exc:
        raise LaunchError(f"cannot use {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise LaunchError(f"{directory} is not a directory: remove it, and scoop will make one")
    if stranger := _not_yours(directory, info):
        raise LaunchError(
            f"{stranger}: another user can read or replace what scoop keeps there; remove it "
            "(scoop makes a private one) or check who made it"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        os.chmod(directory, 0o700)
        log.warning("%s was open to other users (mode %04o); made it 0700", directory, mode)


def write_key_file(run_id: str, key: bytes) -> Path:
    """Write ``key`` to :func:`key_file` (0600, in 0700 directories); its path.

    Raises :class:`LaunchError` naming the path if something other than a
    stale key file of ours is there."""
    top = scoop_home()
    path = key_file(run_id)
    private_dir(path.parent, top)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        _remove_stale(path)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise LaunchError(f"cannot write the run's key to {path}: {exc.strerror}") from None
    except OSError as exc:
        raise LaunchError(f"cannot write the run's key to {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return path


def _remove_stale(path: Path) -> None:
    """Remove a key file a launcher of ours left behind; refuse anything else."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise LaunchError(
            f"{path} is a symbolic link (to {os.readlink(path)}), not a key file scoop wrote: "
            "someone may be trying to make scoop write the run's key where they can read it; "
            "scoop refuses to write through it. Remove it after checking who made it"
        )
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise LaunchError(
            f"{path} is in the way of the run's key file and was not written by scoop for you "
            f"(owner uid {info.st_uid}); remove it after checking who made it"
        )
    log.info("replacing %s, left by a launcher that did not end its run", path)
    path.unlink()


def read_private_file(path: Path | str, what: str = "the run's key", *, follow: bool = True) -> str:
    """The text of ``path``, a secret: ValueError unless it is a regular file
    of this user's that group and others cannot use (the message names the
    path and the fix). A FIFO is refused without blocking; so is a symbolic
    link unless ``follow`` (a link the user made to their key file is theirs
    to make; a file written for one process to read, such as a ticket, is
    never a link)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise ValueError(
                f"{path} is a symbolic link: {what} is read only from a file written for it"
            ) from None
        raise ValueError(f"cannot read {what} from {path} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file: {what} must be in one")
        if stranger := _not_yours(path, info):
            raise ValueError(f"{stranger}: scoop reads {what} only from a file of yours")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{path} is open to other users (mode {mode:04o}): whoever reads {what} "
                f"can run code in the run; chmod 600 {path}"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, encoding="utf-8", errors="replace", closefd=False) as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read {what} from {path} ({exc.strerror})") from None
    finally:
        os.close(fd)


def parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"{where} does not hold a run key (at least 32 hex digits)")
    return key


def launcher_key() -> bytes:
    """A new run's secret: ``$SCOOP_RUN_KEY`` if set (to share it with
    workers that join from elsewhere), else a new random one."""
    given = os.environ.get(KEY_ENV)
    if not given:
        return secrets.token_bytes(32)
    try:
        return parse_key(given, f"${KEY_ENV}")
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def find_run_key(run_id: str, path: str | None = None) -> bytes:
    """A joining worker's key: ``path``, else ``$SCOOP_RUN_KEY``, else the key file."""
    if path is None and os.environ.get(KEY_ENV):
        return parse_key(os.environ[KEY_ENV], f"${KEY_ENV}")
    file = Path(path) if path else key_file(run_id)
    try:
        text = read_private_file(file)
    except ValueError as exc:
        if path or file.exists():
            raise
        raise ValueError(
            f"no key for run {run_id}: {exc}; set {KEY_ENV} to the run's key or pass "
            "--key-file (scoop run writes the key file on its machine)"
        ) from None
    return parse_key(text, str(file))
