"""``scoop config``: every setting in force, its value, and where that value came from.

The rows are :class:`~scoop_core.config.Config`'s own ``values`` and
``sources``, core keys first, then each loaded plugin's section, so what is
printed is what a run started from the same place would use. A source is
shown as the configuration records it (``default``, ``scoop.toml:3``,
``command line``), an environment variable as ``env SCOOP_WORKERS``.

Secrets are never printed: a setting whose name says it holds one
(``password``, ``secret``, ``token``, ``key``) shows ``***`` when set, and
the password of any URL (``redis://:pw@host``, ``?password=pw``) is masked
wherever it appears, list items included. The JSON form masks the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from scoop_core.config import Config
from scoop_core.run_tables import table

__all__ = ["MASK", "format_json", "format_table", "is_secret", "mask_value", "rows"]

MASK = "***"

# The last part of a key naming a secret: transport.redis.password, a plugin's api_token.
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|credential|(^|_)key)$", re.IGNORECASE)
_ENV_SOURCE = re.compile(r"SCOOP_[A-Z0-9_]+\Z")


def is_secret(key: str) -> bool:
    """Whether the setting ``key`` (dotted) holds a secret by its name."""
    return bool(_SECRET_NAME.search(key.rsplit(".", 1)[-1]))


def _mask_url(text: str) -> str:
    """``text`` with the password of the URL it is, if any, replaced by ``***``."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    netloc = parts.netloc
    if password:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(k.lower() == "password" for k, _ in pairs):
        query = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in pairs])
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_value(key: str, value: Any) -> Any:
    """``value`` as it may be shown: ``***`` for a secret that is set, URLs' passwords masked."""
    if is_secret(key) and value not in (None, "", []):
        return MASK
    if isinstance(value, str):
        return _mask_url(value)
    if isinstance(value, list):
        return [_mask_url(v) if isinstance(v, str) else v for v in value]
    return value


def show_source(source: str) -> str:
    """A source as users read it: an environment variable as ``env SCOOP_X``."""
    return f"env {source}" if _ENV_SOURCE.match(source) else source


def rows(config: Config) -> list[tuple[str, Any, str]]:
    """``(key, value masked, source)`` for every setting, in the configuration's order."""
    return [
        (key, mask_value(key, value), show_source(config.sources.get(key, "default")))
        for key, value in config.values.items()
    ]


def _shown(value: Any) -> str:
    # JSON spelling, as in a TOML file: strings quoted, true/false, lists in brackets.
    return "(not set)" if value is None else json.dumps(value)


def format_table(config: Config) -> str:
    """The settings as an aligned table: setting, value, source."""
    return table(
        ("setting", "value", "source"),
        [(key, _shown(value), source) for key, value, source in rows(config)],
        right=set(),
    )


def format_json(config: Config) -> str:
    """``{key: {"value": ..., "source": ...}}`` for every setting, secrets masked."""
    return json.dumps(
        {key: {"value": value, "source": source} for key, value, source in rows(config)},
        indent=2,
    )
