"""The plugin manager: selection by name, conflicts, disabling, and tolerant loading.

Plugins here are real modules, and third-party ones are real distributions
(a module plus a ``.dist-info`` with ``entry_points.txt``) written to a
temporary directory on ``sys.path``, which is all ``importlib.metadata``
needs to find them. Nothing of pluggy or importlib is mocked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scoop_core.errors import PluginError
from scoop_core.plugins import LauncherPlugin, SerializerPlugin, TransportPlugin, lazy
from scoop_core.plugins.manager import (
    BUILTIN_PLUGINS,
    PluginInfo,
    PluginManager,
    format_plugin_table,
    get_plugin_manager,
)
from scoop_core.plugins.types import LazyFactory
from scoop_core.serialization import CloudpickleSerializer

REPO = Path(__file__).resolve().parents[2]

# The built-in every checkout has; the others are tested on their own below.
SERIALIZERS_ONLY = (("serializers", "scoop_core.serialization"),)


def make_fake_distribution(
    site: Path,
    name: str,
    version: str,
    source: str,
    entry_points: dict[str, str] | None = None,
) -> None:
    """Leave in ``site`` what ``pip install`` of a one-module plugin would leave.

    ``source`` becomes ``site/<name>.py``; ``entry_points`` maps entry-point
    names to modules in group ``scoop`` (default: ``{name: name}``). Put
    ``site`` on ``sys.path`` or ``PYTHONPATH`` and the plugin is installed.
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{name}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = [f"{ep} = {module}\n" for ep, module in (entry_points or {name: name}).items()]
    (dist_info / "entry_points.txt").write_text("[scoop]\n" + "".join(lines))


def serializer_plugin(record: str, description: str = "") -> str:
    """Source of a plugin module registering one working serializer named ``record``."""
    return f"""
        from scoop_core.plugins import SerializerPlugin, hookimpl
        from scoop_core.serialization import PickleSerializer


        @hookimpl
        def scoop_serializers():
            return [SerializerPlugin(name={record!r}, factory=PickleSerializer,
                                     description={description!r})]
        """


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` to install fake plugins into, for this test only."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(path)):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def no_env_disabling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOOP_DISABLE_PLUGINS", raising=False)


def row(pm: PluginManager, plugin: str, registers: str = "-") -> PluginInfo:
    (found,) = [i for i in pm.plugins() if i.name == plugin and i.registers == registers]
    return found


# -- selection ---------------------------------------------------------------


def test_select_builtin_serializer_by_any_spelling() -> None:
    pm = PluginManager(entry_points=False, builtins=SERIALIZERS_ONLY)

    assert set(pm.serializers()) == {"cloudpickle", "pickle"}
    assert pm.serializer("cloudpickle").factory is CloudpickleSerializer
    assert pm.serializer(" CloudPickle ") is pm.serializer("cloudpickle")
    serializer = pm.serializer("pickle").factory()
    assert serializer.loads(serializer.dumps({"a": [1, 2]})) == {"a": [1, 2]}


def test_unknown_name_lists_the_available_ones(site: Path) -> None:
    (site / "two_transports.py").write_text(
        textwrap.dedent(
            """
            from scoop_core.plugins import TransportPlugin, hookimpl


            def factory(settings):
                raise AssertionError("selection never builds a transport")


            @hookimpl
            def scoop_transports():
                return [TransportPlugin("zmq", factory), TransportPlugin("Redis", factory)]
            """
        )
    )
    pm = PluginManager(entry_points=False, builtins=(("fake", "two_transports"),))

    assert set(pm.transports()) == {"redis", "zmq"}
    with pytest.raises(PluginError) as err:
        pm.transport("foo")
    assert str(err.value) == "unknown transport 'foo'; choose one of: redis, zmq"
    with pytest.raises(PluginError, match="unknown launcher 'ssh'; no launcher plugin"):
        pm.launcher("ssh")


def test_every_builtin_plugin_loads() -> None:
    pytest.importorskip("scoop_core.local_launcher")
    pytest.importorskip("scoop_transport_zmq")
    pm = PluginManager(entry_points=False)

    listed = {info.name: info for info in pm.plugins()}
    for name, module in BUILTIN_PLUGINS:
        assert listed[name].status == "enabled"
        assert listed[name].module == module
        assert listed[name].distribution == "scoop-core"
    assert get_plugin_manager(("pickle",)) is get_plugin_manager(["Pickle"])
    assert get_plugin_manager(("pickle",)) is not get_plugin_manager()


# -- conflicts ---------------------------------------------------------------


def test_a_name_claimed_by_two_distributions_names_both(site: Path) -> None:
    make_fake_distribution(site, "alpha", "1.0", serializer_plugin("fast", "from alpha"))
    make_fake_distribution(site, "beta", "2.0", serializer_plugin("Fast", "from beta"))
    pm = PluginManager(builtins=SERIALIZERS_ONLY)

    with pytest.raises(PluginError) as err:
        pm.serializer("fast")
    message = str(err.value)
    assert "registered by two plugins" in message
    assert "alpha 1.0" in message and "beta 2.0" in message
    assert "SCOOP_DISABLE_PLUGINS=" in message and "disable_plugins" in message
    assert "fast" not in pm.serializers()
    assert pm.serializer("pickle").name == "pickle"
    assert row(pm, "alpha", "fast").status == (
        "error: serializer 'fast' is also registered by plugin 'beta' (beta 2.0)"
    )
    assert row(pm, "beta", "fast").status.startswith("error:")

    resolved = PluginManager(disabled=["beta"], builtins=SERIALIZERS_ONLY)
    assert resolved.serializer("fast").description == "from alpha"
    assert row(resolved, "beta").status == "disabled"


def test_a_third_party_plugin_claiming_a_builtin_name(site: Path) -> None:
    make_fake_distribution(site, "fastpickle", "3.1", serializer_plugin("pickle", "fast"))

    with pytest.raises(PluginError, match=r"scoop-core .*fastpickle 3\.1"):
        PluginManager(builtins=SERIALIZERS_ONLY).serializer("pickle")
    # Plugin names win over record names, so either side can be turned off.
    keep_builtin = PluginManager(disabled=["fastpickle"], builtins=SERIALIZERS_ONLY)
    assert keep_builtin.serializer("pickle").description != "fast"
    keep_third_party = PluginManager(disabled=["serializers"], builtins=SERIALIZERS_ONLY)
    assert keep_third_party.serializer("pickle").description == "fast"


# -- disabling ---------------------------------------------------------------


@pytest.fixture(params=["argument", "environment"])
def disable(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., PluginManager]:
    """Build a manager with some names disabled, through either channel."""

    def build(*names: str, **kwargs: Any) -> PluginManager:
        if request.param == "environment":
            monkeypatch.setenv("SCOOP_DISABLE_PLUGINS", ", ".join(names))
            return PluginManager(**kwargs)
        return PluginManager(disabled=names, **kwargs)

    return build


def test_disable_a_whole_plugin_by_its_name(disable: Callable[..., PluginManager]) -> None:
    pm = disable("Serializers", entry_points=False, builtins=SERIALIZERS_ONLY)

    assert pm.serializers() == {}
    assert pm.plugins() == [
        PluginInfo(
            name="serializers",
            kind="?",
            registers="-",
            module="scoop_core.serialization",
            distribution="scoop-core",
            version=pm.plugins()[0].version,
            status="disabled",
        )
    ]
    with pytest.raises(PluginError, match="unknown serializer 'pickle'"):
        pm.serializer("pickle")


def test_disable_one_record_by_its_name(disable: Callable[..., PluginManager]) -> None:
    pm = disable("pickle", entry_points=False, builtins=SERIALIZERS_ONLY)

    assert set(pm.serializers()) == {"cloudpickle"}
    assert row(pm, "serializers", "pickle").status == "disabled"
    assert row(pm, "serializers", "cloudpickle").status == "enabled"
    with pytest.raises(PluginError, match="serializer 'pickle' is disabled"):
        pm.serializer("pickle")


def test_a_disabled_plugin_is_not_even_imported(site: Path) -> None:
    make_fake_distribution(site, "explodes", "1.0", "raise SystemExit('imported!')")
    pm = PluginManager(
        disabled=["explodes", "ghost"],
        builtins=(*SERIALIZERS_ONLY, ("ghost", "no_such_module_for_scoop_tests")),
    )

    assert row(pm, "explodes").status == "disabled"
    assert row(pm, "ghost").status == "disabled"
    assert "pickle" in pm.serializers()


# -- third-party distributions -----------------------------------------------


def run_python(code: str, site: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees ``site`` as installed packages."""
    path = [str(site), str(REPO), str(REPO / "plugins" / "transport_zmq")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    env.pop("SCOOP_DISABLE_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_installed_distribution_is_listed_and_selectable(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_fake_distribution(site, "myplug", "0.1", serializer_plugin("myplug"))

    result = run_python(
        """
        from scoop_core.plugins.manager import PluginManager, format_plugin_table

        pm = PluginManager(builtins=(("serializers", "scoop_core.serialization"),))
        print(format_plugin_table(pm.plugins()))
        serializer = pm.serializer("myplug").factory()
        print("round trip:", serializer.loads(serializer.dumps([1, 2, 3])))
        """,
        site,
    )

    assert result.returncode == 0, result.stderr
    table = [line.split() for line in result.stdout.splitlines()]
    assert table[0] == ["NAME", "KIND", "PLUGIN", "DISTRIBUTION", "VERSION", "STATUS"]
    assert ["myplug", "serializer", "myplug", "myplug", "0.1", "enabled"] in table
    assert "round trip: [1, 2, 3]" in result.stdout


def test_a_plugin_declared_among_other_entry_points_is_found(site: Path) -> None:
    # Console scripts often come first.
    make_fake_distribution(site, "mixedplug", "0.2", serializer_plugin("mixed"))
    (site / "mixedplug-0.2.dist-info" / "entry_points.txt").write_text(
        "[console_scripts]\nmixed = mixedplug:main\n\n[scoop]\nmixedplug = mixedplug\n"
    )

    pm = PluginManager(builtins=SERIALIZERS_ONLY)

    assert row(pm, "mixedplug", "mixed").status == "enabled"
    assert pm.serializer("mixed").factory().loads(pm.serializer("mixed").factory().dumps(7)) == 7


def test_a_broken_distribution_is_listed_and_skipped(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_fake_distribution(site, "goodplug", "1.0", serializer_plugin("good"))
    make_fake_distribution(site, "brokenplug", "2.0", "raise ImportError('needs libfoo')")

    with caplog.at_level(logging.WARNING, logger="scoop.plugins"):
        pm = PluginManager(builtins=SERIALIZERS_ONLY)

    assert pm.serializer("good").name == "good"
    assert pm.serializer("pickle").name == "pickle"
    status = row(pm, "brokenplug").status
    assert status.startswith("error: ") and "needs libfoo" in status
    assert "\n" not in status
    assert any(
        "brokenplug 2.0" in r.getMessage() and "needs libfoo" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(PluginError, match="brokenplug.*needs libfoo"):
        pm.serializer("brokenplug")
    assert "needs libfoo" in format_plugin_table(pm.plugins())


BAD_HOOKS = {
    "raises": (
        """
        @hookimpl
        def scoop_serializers():
            raise RuntimeError("no config")
        """,
        "scoop_serializers() raised RuntimeError: no config",
    ),
    "raises-while-iterating": (
        """
        @hookimpl
        def scoop_serializers():
            yield SerializerPlugin("half", PickleSerializer)
            raise OSError("disk gone")
        """,
        "raised OSError: disk gone",
    ),
    "bad-record": (
        """
        @hookimpl
        def scoop_serializers():
            return [SerializerPlugin("", PickleSerializer)]
        """,
        "raised TypeError: SerializerPlugin needs a non-empty name",
    ),
    "wrong-type": (
        """
        @hookimpl
        def scoop_serializers():
            return [PickleSerializer]
        """,
        "returned <class 'scoop_core.serialization.PickleSerializer'>, not a SerializerPlugin",
    ),
    "wrong-kind": (
        """
        @hookimpl
        def scoop_transports():
            return [SerializerPlugin("ser", PickleSerializer)]
        """,
        "not a TransportPlugin",
    ),
    "none": (
        """
        @hookimpl
        def scoop_serializers():
            SerializerPlugin("forgot-to-return", PickleSerializer)
        """,
        "scoop_serializers() returned None, not an iterable of SerializerPlugin",
    ),
    "misspelt-hook": (
        """
        @hookimpl
        def scoop_serialisers():
            return []
        """,
        "unknown hook 'scoop_serialisers'",
    ),
    "extra-argument": (
        """
        @hookimpl
        def scoop_serializers(config):
            return []
        """,
        "Argument(s) {'config'} are declared in the hookimpl",
    ),
    "wrapper": (
        """
        @hookimpl(wrapper=True)
        def scoop_serializers():
            return (yield)
        """,
        "scoop_serializers must return records",
    ),
}


@pytest.mark.parametrize("source, reason", BAD_HOOKS.values(), ids=BAD_HOOKS.keys())
def test_a_bad_hook_skips_its_plugin_only(
    site: Path, caplog: pytest.LogCaptureFixture, source: str, reason: str
) -> None:
    header = """
        from scoop_core.plugins import LauncherPlugin, SerializerPlugin, Setting, hookimpl
        from scoop_core.serialization import PickleSerializer


        @hookimpl
        def scoop_launchers():
            return [LauncherPlugin("badplug", dict, settings=(Setting("level", int, 1),))]
        """
    make_fake_distribution(
        site, "badplug", "0.3", textwrap.dedent(header) + textwrap.dedent(source)
    )
    make_fake_distribution(site, "goodplug", "1.0", serializer_plugin("good"))

    with caplog.at_level(logging.WARNING, logger="scoop.plugins"):
        pm = PluginManager(builtins=SERIALIZERS_ONLY)

    status = row(pm, "badplug").status
    assert status.startswith("error: ") and reason in status
    # The plugin contributes nothing, not even its well-formed records.
    assert [i for i in pm.plugins() if i.name == "badplug"] == [row(pm, "badplug")]
    assert pm.settings() == {}
    assert pm.launchers() == {}
    assert {"good", "pickle", "cloudpickle"} <= set(pm.serializers())
    assert any("badplug 0.3" in r.getMessage() for r in caplog.records)


def test_a_broken_builtin_stops_loading(site: Path) -> None:
    (site / "bad_builtin.py").write_text(
        textwrap.dedent(
            """
            from scoop_core.plugins import hookimpl


            @hookimpl
            def scoop_serializers():
                return [42]
            """
        )
    )

    with pytest.raises(PluginError, match=r"SCOOP_DISABLE_PLUGINS=ghost"):
        PluginManager(builtins=(*SERIALIZERS_ONLY, ("ghost", "no_such_module_for_scoop_tests")))
    with pytest.raises(
        PluginError, match=r"built-in plugin 'bad'.*returned 42, not a SerializerPlugin"
    ):
        PluginManager(builtins=(("bad", "bad_builtin"),))


# -- settings on the records ------------------------------------------------------

SETTINGS_PLUGIN = """
    from scoop_core.plugins import LauncherPlugin, Setting, TransportPlugin, hookimpl


    def refuse(settings):
        raise AssertionError("loading plugins builds nothing")


    @hookimpl
    def scoop_transports():
        return [
            TransportPlugin(
                "My_Bus",
                refuse,
                settings=[Setting("url", str, "tcp://bus:7000"), Setting("hosts", list, [])],
            )
        ]


    @hookimpl
    def scoop_launchers():
        return [LauncherPlugin("my-bus", refuse, settings=(Setting("url", int, 3),))]
    """


def test_settings_live_in_the_section_of_their_records_kind_and_name(
    site: Path, tmp_path: Path
) -> None:
    from scoop_core.config import load_config

    make_fake_distribution(site, "busplug", "1.0", SETTINGS_PLUGIN)
    pm = PluginManager(builtins=())

    assert list(pm.settings()) == ["transport.my-bus", "launcher.my-bus"]
    assert pm.transport("my-bus").section == "transport.my-bus"
    environ = {"SCOOP_TRANSPORT_MY_BUS_HOSTS": "a, b", "SCOOP_LAUNCHER_MY_BUS_URL": "5"}
    config = load_config(plugin_settings=pm.settings(), cwd=tmp_path, environ=environ)
    assert config.section("transport.my-bus") == {"url": "tcp://bus:7000", "hosts": ["a", "b"]}
    assert config.section("launcher.my-bus") == {"url": 5}


def test_a_disabled_records_settings_stay_declared(site: Path, tmp_path: Path) -> None:
    from scoop_core.config import load_config

    make_fake_distribution(site, "busplug", "1.0", SETTINGS_PLUGIN)
    (tmp_path / "scoop.toml").write_text('[scoop.transport.my-bus]\nurl = "tcp://other:1"\n')
    pm = PluginManager(disabled=["my-bus"], builtins=())

    assert pm.transports() == {}
    # The user's table for a transport turned off today is still valid.
    config = load_config(plugin_settings=pm.settings(), cwd=tmp_path, environ={})
    assert config["transport.my-bus.url"] == "tcp://other:1"


def test_an_unknown_plugin_setting_names_its_line_and_a_close_name(
    site: Path, tmp_path: Path
) -> None:
    from scoop_core.config import load_config
    from scoop_core.errors import ConfigError

    make_fake_distribution(site, "busplug", "1.0", SETTINGS_PLUGIN)
    (tmp_path / "scoop.toml").write_text('[scoop]\n\n[scoop.transport.my-bus]\nulr = "x"\n')
    pm = PluginManager(builtins=())

    with pytest.raises(ConfigError) as err:
        load_config(plugin_settings=pm.settings(), cwd=tmp_path, environ={})
    message = str(err.value)
    assert message.startswith("scoop.toml:4: unknown key 'ulr' in [scoop.transport.my-bus]")
    assert "did you mean 'url'?" in message


BAD_DEFAULTS = {
    "not-a-number": ('Setting("ratio", float, float("nan"))', "default nan, which does not"),
    "infinite": ('Setting("ratio", float, float("inf"))', "survive a JSON round trip"),
    "tuple-for-list": ('Setting("hosts", list, ("a",))', "default ('a',) (tuple), not a list"),
    "wrong-type": ('Setting("port", int, "80")', "default '80' (str), not int"),
    "bytes": ('Setting("key", str, b"k")', "default b'k' (bytes), not str"),
    "unknown-type": ('Setting("when", dict, {})', "has type <class 'dict'>; choose one of"),
    "twice": ('Setting("a", str, ""), Setting("a", str, "")', "setting 'a' is declared twice"),
}


@pytest.mark.parametrize("declared, reason", BAD_DEFAULTS.values(), ids=BAD_DEFAULTS.keys())
def test_a_setting_workers_could_not_receive_is_refused_at_registration(
    site: Path, caplog: pytest.LogCaptureFixture, declared: str, reason: str
) -> None:
    source = f"""
        from scoop_core.plugins import Setting, TransportPlugin, hookimpl


        @hookimpl
        def scoop_transports():
            return [TransportPlugin("bus", dict, settings=({declared},))]
        """
    make_fake_distribution(site, "busplug", "1.0", source)

    with caplog.at_level(logging.WARNING, logger="scoop.plugins"):
        pm = PluginManager(builtins=())

    status = row(pm, "busplug").status
    assert status.startswith("error: scoop_transports() raised ValueError: transport 'bus': ")
    assert reason in status
    assert pm.settings() == {}
    assert any("busplug 1.0" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_every_builtin_default_survives_json() -> None:
    pytest.importorskip("scoop_transport_zmq")
    import json

    for section, settings in PluginManager(entry_points=False).settings().items():
        for setting in settings:
            assert json.loads(json.dumps(setting.default)) == setting.default, (section, setting)


# -- lazy factories ------------------------------------------------------------


def test_every_builtin_lazy_factory_names_code_that_exists() -> None:
    # mypy cannot see into "module:attr": a misspelt one would only fail when chosen.
    pytest.importorskip("scoop_transport_zmq")
    pm = PluginManager(entry_points=False)
    records = [*pm.transports().values(), *pm.serializers().values(), *pm.launchers().values()]

    factories = {r.name: r.factory for r in records if isinstance(r.factory, LazyFactory)}
    assert {"zmq", "redis", "ssh", "slurm", "sge", "torque"} <= set(factories)
    for name, factory in factories.items():
        assert callable(factory.resolve()), name


def test_listing_plugins_imports_no_transport_or_launcher_code() -> None:
    code = (
        "import sys\n"
        "from scoop_core.plugins.manager import PluginManager\n"
        "PluginManager(entry_points=False)\n"
        "heavy = ('zmq', 'redis', 'paramiko', 'scoop_transport_zmq.transport',\n"
        "         'scoop_transport_redis.transport', 'scoop_launcher_ssh.launcher',\n"
        "         'scoop_launcher_slurm.launcher', 'scoop_launcher_sge.launcher',\n"
        "         'scoop_launcher_torque.launcher')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_lazy_factory_is_imported_on_first_call_only() -> None:
    record = SerializerPlugin("late", lazy("scoop_core.serialization:PickleSerializer"))

    assert record.factory == lazy("scoop_core.serialization:PickleSerializer").for_record(
        "serializer 'late'"
    )
    serializer = record.factory()
    assert serializer.loads(serializer.dumps([1, "a"])) == [1, "a"]


@pytest.mark.parametrize("spec", ["mypkg.transport", "mypkg:", ":TcpTransport", "a:b:c", ""])
def test_a_misspelt_lazy_factory_is_refused_when_the_record_is_made(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        TransportPlugin("mytcp", lazy(spec))
    assert str(err.value) == (
        f"lazy factory {spec!r} is not spelt 'module:attr', e.g. 'mypkg.transport:TcpTransport'"
    )


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ("mypkg_not_installed.transport:TcpTransport", "ModuleNotFoundError: No module named"),
        ("scoop_core.serialization:NoSuchSerializer", "AttributeError: module"),
        ("scoop_core.plugins.types:SETTING_TYPES", "it is a tuple, not callable"),
    ],
)
def test_a_lazy_factory_that_cannot_be_imported_names_its_record(spec: str, cause: str) -> None:
    record = TransportPlugin("My_TCP", lazy(spec))

    with pytest.raises(PluginError) as err:
        record.factory({})
    message = str(err.value)
    assert message.startswith(f"transport 'my-tcp': cannot load the factory {spec!r} ({cause}")
    assert message.endswith("the plugin's package may be installed incompletely: reinstall it")


def test_a_job_queue_that_cannot_be_imported_names_its_launcher() -> None:
    record = LauncherPlugin(
        "My_Sched", lazy("scoop_launcher_slurm:SlurmLauncher"), job_queue=lazy("nopkg.jobs:Q")
    )

    with pytest.raises(PluginError) as err:
        assert record.job_queue is not None
        record.job_queue({})
    assert str(err.value).startswith("launcher 'my-sched': cannot load the factory 'nopkg.jobs:Q'")


# -- the listing ---------------------------------------------------------------


def test_plugin_table_is_aligned() -> None:
    infos = [
        PluginInfo(
            "zmq", "transport", "zmq", "scoop_transport_zmq", "scoop-core", "0.1.0", "enabled"
        ),
        PluginInfo("b", "?", "-", "b.plugin", "scoop-b", "10.2.3", "error: ImportError: no b"),
    ]

    lines = format_plugin_table(infos).splitlines()

    assert lines[0].split() == ["NAME", "KIND", "PLUGIN", "DISTRIBUTION", "VERSION", "STATUS"]
    assert lines[1].split() == ["zmq", "transport", "zmq", "scoop-core", "0.1.0", "enabled"]
    assert lines[2].endswith("error: ImportError: no b")
    for word in ("KIND", "PLUGIN", "DISTRIBUTION", "VERSION", "STATUS"):
        column = lines[0].index(word)
        assert all(line[column - 2 : column] == "  " for line in lines)
        assert all(line[column] != " " for line in lines)
