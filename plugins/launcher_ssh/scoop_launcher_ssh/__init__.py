"""The ``ssh`` launcher plugin: workers on other machines, started over SSH.

It registers the launcher ``ssh`` and its settings, the table
``[scoop.launcher.ssh]`` (environment ``SCOOP_LAUNCHER_SSH_<KEY>``):

- ``connect_timeout`` -- seconds each host gets to accept the connection,
  the login and the start of its supervisor (default 10). A host that
  takes longer is reported by name, and the run does not start.
- ``host_key_policy`` -- what to do with a host whose key is not in
  ``known_hosts``: ``reject`` (the default: refuse, and say how to accept
  it), ``accept-new`` (trust it and add it to ``known_hosts``, as OpenSSH's
  ``StrictHostKeyChecking=accept-new``) or ``warn`` (trust it this once,
  with a warning). A host's own ``StrictHostKeyChecking`` in ``ssh_config``
  wins over it. A host whose key *changed* is always refused.
- ``known_hosts`` -- the known-hosts file (default ``~/.ssh/known_hosts``,
  or the ``UserKnownHostsFile`` of ``ssh_config``).
- ``ssh_config`` -- the OpenSSH client configuration to honour (default
  ``~/.ssh/config``): ``Host`` aliases, ``HostName``, ``User``, ``Port``,
  ``IdentityFile``, ``ProxyJump`` and ``ProxyCommand``.
- ``ssh_executable`` -- empty (the default) to use the built-in client
  (paramiko); else a program to run instead, such as ``ssh`` or
  ``/usr/bin/rsh``, for sites whose logins need it (Kerberos, smart cards).
- ``tunnel`` -- route the workers' connections to the broker through SSH
  port forwarding (``--tunnel``), for hosts that cannot reach this machine
  directly (not with an rsh).
- ``connections`` -- how many hosts are logged in to at once (default 32).
- ``upload`` -- for hosts that do not see the program as it is here (no
  shared file system, or a stale copy): send it to them (``--upload``),
  into a private directory in each host's temporary directory, removed when
  the run ends. Without it such a host fails the start, by name, before
  any worker starts.
- ``upload_files`` -- more files sent beside the program, such as modules
  it imports and data it reads (``--upload-file FILE``, repeatable);
  implies ``upload``.

Nothing here prompts: keys come from ``IdentityFile``, ``~/.ssh/id_*`` or an
ssh-agent; a key with a passphrase needs the agent. On each host one
supervisor (:mod:`scoop_core.host_supervisor`) starts that host's workers in one
process group, gets their environment (the run's key among it) through the
SSH channel, forwards their output prefixed with the host, and leaves
nothing behind when the run ends. paramiko is imported only when the
launcher is built (see :mod:`.launcher`).
"""

from __future__ import annotations

from collections.abc import Iterable

from scoop_core.plugins import LauncherPlugin, Setting, hookimpl, lazy

__all__ = ["HOST_KEY_POLICIES", "LAUNCHER", "scoop_launchers"]

HOST_KEY_POLICIES = ("reject", "accept-new", "warn")
"""The values ``host_key_policy`` accepts."""

LAUNCHER = LauncherPlugin(
    name="ssh",
    factory=lazy("scoop_launcher_ssh.launcher:SshLauncher"),
    description="workers on other machines over SSH (paramiko, or an ssh/rsh program)",
    settings=(
        Setting(
            "connect_timeout",
            float,
            10.0,
            "seconds a host gets to accept the connection, the login and the start",
        ),
        Setting(
            "host_key_policy",
            str,
            "reject",
            "unknown host keys: reject, accept-new (add to known_hosts) or warn",
        ),
        Setting("known_hosts", str, "", "known-hosts file; empty = ~/.ssh/known_hosts"),
        Setting("ssh_config", str, "", "OpenSSH client config; empty = ~/.ssh/config"),
        Setting(
            "ssh_executable",
            str,
            "",
            "an ssh or rsh program to use instead of the built-in client; empty = built-in",
        ),
        Setting(
            "tunnel", bool, False, "workers reach the broker through SSH port forwarding (--tunnel)"
        ),
        Setting("connections", int, 32, "how many hosts are logged in to at once"),
        Setting(
            "upload",
            bool,
            False,
            "copy the program to hosts that cannot see it, into their temporary directory (--upload)",
        ),
        Setting(
            "upload_files",
            list,
            [],
            "more files copied beside the program (--upload-file); implies upload",
        ),
    ),
)


@hookimpl
def scoop_launchers() -> Iterable[LauncherPlugin]:
    return (LAUNCHER,)
