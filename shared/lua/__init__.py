"""Every Redis Lua script of imagegate, one file per transition, and their loader.

``job_*``: the job record's transitions (:mod:`shared.jobs`); ``admit`` and
``release_idempotency``: :mod:`shared.billing`; ``capacity_*``: :mod:`shared.capacity`;
``breaker_*``: :mod:`shared.health`; ``webhook_take``: :mod:`workers.webhook_pump`;
``webhook_claim``: :mod:`workers.webhooks`; ``parse_charge``: :mod:`api.parse_limit`;
``jobstats_count``: :mod:`shared.jobstats`;
``_*.lua``: pieces the job scripts include.

Every ``<name>.lua`` here is one atomic transition, run with ``EVALSHA`` through
:func:`register` (redis-py's ``register_script``: the script is sent again only
when Redis has forgotten it). The conventions, which ``tests/test_lua_scripts.py``
checks on every file:

* **A header**, the script's first comment block, says what it does, lists
  every key by position (``-- KEYS[1] job record``; ``-- KEYS[6..] ...`` for a
  variable tail) and every named argument (``-- ARGV[1] JSON:`` then one
  ``--   name  meaning`` line each, a longer meaning going on in lines indented
  further), and what it returns.
* **Every key the script touches comes from KEYS** — no key name is built
  inside a script — so the scripts could run on Redis Cluster once the key names
  share a hash tag. (A pub/sub channel is not a key: it is a named argument.)
* **Named arguments, one JSON argument**: ``ARGV[1]`` is a JSON object, read
  with ``local a = cjson.decode(ARGV[1])``. :class:`Script` encodes it from
  keyword arguments and refuses a call whose names differ from the header's, so
  a misspelt or forgotten argument fails at once instead of reading as nil.
  Empty strings, not JSON ``null``, mean "none" (cjson decodes ``null`` to a
  value that is not ``nil``); times that are written back are passed as strings,
  since Lua prints numbers with 14 digits.
* **Shared pieces are included, explicitly**: a file whose name starts with
  ``_`` is a piece, not a script. It declares ``local function``s (and local
  constants) that take everything they use as parameters — no ``KEYS``, no
  ``ARGV``, no free locals of the including script. A script names the pieces it
  uses with ``-- #include _name.lua`` lines; :func:`source` replaces each such
  line with the piece's text (a piece may include another; each is inserted once
  per script, at its first mention). Nothing else is rewritten: the script Redis
  runs is the file's text with its includes inlined. Line numbers in a Redis
  error count the inlined lines; ``source(name)`` shows the script as run.

Why includes rather than copies: the terminal transition (status, settlement,
notifications) is ~40 lines used by three scripts, and money code that exists
three times drifts. Why not Redis 7 Functions (``FUNCTION LOAD``, which share
code natively): they are stored server-side and must be loaded at deploy
time and kept in step with the code, where ``EVALSHA`` scripts travel with it.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import redis

_INCLUDE = re.compile(r"^-- #include (_[a-z0-9_]+\.lua)\s*$", re.MULTILINE)
_KEY_LINE = re.compile(r"^-- KEYS\[(\d+)(\.\.)?\]\s+\S", re.MULTILINE)
_ARGV_BLOCK = re.compile(r"^-- ARGV\[1\] JSON:.*\n((?:--   .*\n)*)", re.MULTILINE)
_ARG_NAME = re.compile(r"^--   (\w+)", re.MULTILINE)


def _text(filename: str) -> str:
    return files(__package__).joinpath(filename).read_text(encoding="utf-8")


def script_names() -> list[str]:
    """The scripts (not the ``_`` pieces), by name without ``.lua``."""
    return sorted(
        p.name[:-4]
        for p in files(__package__).iterdir()
        if p.name.endswith(".lua") and not p.name.startswith("_")
    )


def piece_names() -> list[str]:
    """The included pieces, as file names (``_settle.lua``)."""
    return sorted(
        p.name for p in files(__package__).iterdir() if p.name.endswith(".lua") and p.name[0] == "_"
    )


@cache
def source(name: str) -> str:
    """The text Redis runs for the script ``name``: its file with every include inlined."""
    done: set[str] = set()

    def expand(text: str) -> str:
        def inline(match: re.Match[str]) -> str:
            piece = match.group(1)
            if piece in done:
                return f"-- (#include {piece}: already above)"
            done.add(piece)
            return f"-- >>> {piece}\n{expand(_text(piece)).rstrip()}\n-- <<< {piece}"

        return _INCLUDE.sub(inline, text)

    return expand(_text(f"{name}.lua"))


@dataclass(frozen=True)
class Header:
    """What a script's header declares: its fixed keys, whether more may follow, its args."""

    keys: int  # KEYS[1..keys] are named one by one
    more_keys: bool  # a ``KEYS[n..]`` line: any number of keys may follow
    args: frozenset[str]


@cache
def header(name: str) -> Header:
    """The declared KEYS and ARGV of a script (see the module docstring for the format)."""
    text = _text(f"{name}.lua")
    head = text[: text.index("\n\n")] if "\n\n" in text else text
    keys = [(int(n), bool(more)) for n, more in _KEY_LINE.findall(head)]
    block = _ARGV_BLOCK.search(head + "\n")
    if block is None:
        raise ValueError(f"shared/lua/{name}.lua: the header declares no '-- ARGV[1] JSON:'")
    fixed = [n for n, more in keys if not more]
    if fixed != list(range(1, len(fixed) + 1)):
        raise ValueError(f"shared/lua/{name}.lua: KEYS must be listed as 1, 2, 3, ...")
    return Header(
        keys=len(fixed),
        more_keys=any(more for _, more in keys),
        args=frozenset(_ARG_NAME.findall(block.group(1))),
    )


class Script:
    """One registered script, called with its keys and its named arguments."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.name = name
        self.header = header(name)
        self._script = client.register_script(source(name))

    def __call__(self, keys: Sequence[str], **args: Any) -> Any:
        declared = self.header
        if set(args) != declared.args:
            raise TypeError(f"{self.name}.lua takes {sorted(declared.args)}, not {sorted(args)}")
        if len(keys) < declared.keys or (len(keys) > declared.keys and not declared.more_keys):
            raise TypeError(f"{self.name}.lua: {len(keys)} keys, its header lists {declared.keys}")
        return self._script(keys=list(keys), args=[json.dumps(args, separators=(",", ":"))])


def register(client: redis.Redis, name: str) -> Script:
    """The script ``shared/lua/<name>.lua`` (read once per process) on ``client``."""
    return Script(client, name)


_ON_CLIENT: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = weakref.WeakKeyDictionary()


def on(client: redis.Redis, name: str) -> Script:
    """:func:`register`, once per client: for module functions called per request or job
    with whichever client the caller has (a class registers its scripts in ``__init__``)."""
    scripts = _ON_CLIENT.setdefault(client, {})
    script = scripts.get(name)
    if script is None:
        script = scripts[name] = Script(client, name)
    return script
