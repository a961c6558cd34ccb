"""MkDocs hooks: the pages generated from the code at build time, so they cannot drift.

* ``reference/api.md`` is rendered from :func:`api.openapi.build_openapi`, the document the
  gateway serves at ``/openapi.json``.
* ``internals/lua.md`` lists every Lua transition in ``shared/lua/`` with its header (what
  it does, its KEYS, its named ARGV, what it returns), as the file says it.
* ``reference/settings.md`` is the table of every ``IMAGEGATE_*`` variable, read from the
  pydantic-settings models of :mod:`shared.settings` (name, type, default); the meaning is
  the field's ``description`` or else its line in ``docs/settings_meanings.toml``. A setting
  with neither, or a line naming no setting, fails the build.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

HERE = Path(__file__).parent
METHODS = ("get", "post", "put", "patch", "delete")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "reference/api.md", content=api_reference()))
    files.append(File.generated(config, "reference/settings.md", content=settings_reference()))
    files.append(File.generated(config, "internals/lua.md", content=lua_reference()))
    return files


# --- the API reference ---------------------------------------------------------------


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    """A short name for a JSON schema: its $ref, type, enum or union."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " or ".join(_type(s) for s in schema[union])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _properties(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", ()))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in props.items():
        yes = "yes" if name in required else ""
        rows.append(f"| `{name}` | {_type(prop)} | {yes} | {_cell(prop.get('description', ''))} |")
    return [*rows, ""]


def _resolve(doc: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in item:
        _, _, kind, name = item["$ref"].split("/")
        item = doc["components"][kind][name]
    return item


def api_reference() -> str:
    from api.openapi import build_openapi

    doc = build_openapi()
    info = doc["info"]
    out = [
        "# API reference",
        "",
        f"*Generated from the gateway's own OpenAPI document ({info['title']} "
        f"{info['version']}, served at `/openapi.json`).*",
        "",
        _cell(info.get("description", "")),
        "",
    ]
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [f"**{op['summary']}**", ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = [
                _resolve(doc, p) for p in [*item.get("parameters", []), *op.get("parameters", [])]
            ]
            if params:
                out += ["| parameter | in | type | description |", "|---|---|---|---|"]
                for p in params:
                    schema = p.get("schema", {})
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_type(schema)} | "
                        f"{_cell(p.get('description', ''))} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                body = _resolve(doc, body)
                for media, content in body.get("content", {}).items():
                    out.append(f"Request body (`{media}`): {_type(content.get('schema', {}))}")
                out.append("")
            out += ["| status | meaning | body |", "|---|---|---|"]
            for status, answer in op.get("responses", {}).items():
                answer = _resolve(doc, answer)
                bodies = ", ".join(
                    f"{_type(c.get('schema', {}))} (`{media}`)"
                    for media, c in answer.get("content", {}).items()
                )
                out.append(f"| {status} | {_cell(answer.get('description'))} | {bodies} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        rows = _properties(schema)
        out += rows or [f"Type: {_type(schema)}", ""]
    return "\n".join(out) + "\n"


# --- the settings table --------------------------------------------------------------


def setting_meanings() -> dict[str, str]:
    return tomllib.loads((HERE / "settings_meanings.toml").read_text())


def setting_rows(meanings: dict[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(variable, type, default, meaning) of every setting, in the models' order."""
    from pydantic_core import PydanticUndefined

    from shared.settings import _NOT_FROM_ENV, PREFIX, Settings, _StorageVariables

    meanings = dict(setting_meanings() if meanings is None else meanings)
    rows, seen = [], set()
    for model in (Settings, _StorageVariables):
        for name, field in model.model_fields.items():
            if model is Settings and name in _NOT_FROM_ENV:
                continue
            alias = field.validation_alias
            variable = alias if isinstance(alias, str) else PREFIX + name.upper()
            if variable in seen:  # read by both models (IMAGEGATE_PUBLIC_BASE_URL)
                continue
            seen.add(variable)
            if field.default is not PydanticUndefined:
                default = field.default
            else:
                default = field.default_factory() if field.default_factory else ""
            if isinstance(default, tuple):
                default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            elif isinstance(default, bool):
                default = "on" if default else "off"
            elif isinstance(default, float):
                default = f"{default:g}"
            meaning = field.description or meanings.pop(variable, None)
            if not meaning:
                raise PluginError(
                    f"setting {variable} has no description: give its field one or add it "
                    "to docs/settings_meanings.toml"
                )
            kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
            rows.append((variable, kind.replace("typing.", ""), str(default), meaning))
    if meanings:
        raise PluginError(f"docs/settings_meanings.toml names no setting: {sorted(meanings)}")
    return rows


def settings_reference() -> str:
    out = [
        "# Settings",
        "",
        "*Generated from `shared/settings.py` (the pydantic-settings models) at build time.*",
        "",
        "All settings are environment variables, read once into a frozen "
        "`shared.settings.Settings` (the only code that reads the environment). A blank "
        "value counts as unset; a flag is on for `1`, `true` or `yes`. A value that "
        "cannot be used stops the process with one line naming it, e.g. "
        "`IMAGEGATE_WEB_CONNECTIONS='lots' is not a number`.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for variable, kind, default, meaning in setting_rows():
        shown = f"`{default}`" if default else "—"
        out.append(f"| `{variable}` | {_cell(kind)} | {shown} | {_cell(meaning)} |")
    out += [
        "",
        "Besides these, `IMAGEGATE_BASE_URL_<FAMILY>` replaces a family's catalog "
        "`base_url` (e.g. `IMAGEGATE_BASE_URL_OPENAI=https://proxy.example/v1`), and the "
        "upstream keys are read from the variables the catalog names (`OPENAI_API_KEY`, "
        "`BFL_API_KEY`, `REPLICATE_API_TOKEN`, `FAL_KEY`, `ARK_API_KEY`, `ZHIPU_API_KEY`, "
        "`STABILITY_API_KEY`). A model whose family has no key is still listed "
        '(`"available": false`) and answers 503 naming the variable.',
        "",
    ]
    return "\n".join(out)


# --- the Lua transitions --------------------------------------------------------------


def lua_header(text: str) -> str:
    """A script's first comment block, without the comment marks."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[3:] if line.startswith("-- ") else line[2:])
    return "\n".join(lines).rstrip()


def lua_reference() -> str:
    import shared.lua

    folder = Path(shared.lua.__file__).parent
    out = [
        "# The Lua transitions",
        "",
        "*Generated from the headers of `shared/lua/*.lua` at build time.*",
        "",
        "Every change of money, admission and job state is one Lua script run atomically "
        "in Redis, one file per transition. Each takes every key it touches in `KEYS` "
        "and its arguments as one JSON object in `ARGV[1]`, named in its header; "
        "`tests/test_lua_scripts.py` checks both conventions on every file. Files whose "
        "name starts with `_` are pieces that scripts include (`-- #include _name.lua`).",
        "",
    ]
    for path in sorted(folder.glob("*.lua"), key=lambda p: (p.name.startswith("_"), p.name)):
        header = lua_header(path.read_text())
        if not header:
            raise PluginError(f"shared/lua/{path.name} has no header comment")
        out += [f"## `{path.name}`", "", "```text", header, "```", ""]
    return "\n".join(out)
