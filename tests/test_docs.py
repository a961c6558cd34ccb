"""The documentation: the site builds with ``mkdocs build --strict``, and every code sample
in ``docs/**/*.md`` and README.md runs against the live test stack.

Samples address the gateway as ``http://127.0.0.1:8080`` (or ``localhost:8080``) with the
key in ``KEY`` (Python), ``$KEY`` (shell) or ``process.env.KEY`` (Node); each is run with
this stack's address and a key of its own. A sample that cannot run here (it starts a
server, installs software, needs placeholders filled in) is marked with an HTML comment on
the line before its fence, ``<!-- sample: parse-only (why) -->``, and is only parsed:
Python compiled, shell ``bash -n``, JavaScript ``node --check``. README.md's marks are in
README_PARSE_ONLY below (a mark that names no block there fails, so the list cannot rot).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import create_key
from tests.support.processes import BIN, REPO

LANGUAGES = {
    "python": "python", "py": "python", "python3": "python",
    "bash": "shell", "sh": "shell", "shell": "shell", "console": "shell",
    "js": "node", "javascript": "node", "node": "node", "mjs": "node",
}  # fmt: skip
PARSE_ONLY = re.compile(r"<!--\s*sample:\s*parse-only\b.*?-->")
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
# README.md's blocks that only parse, by their first line (the README carries no marks of its
# own, so its first lines stay the set-up commands that tests/test_readme_commands.py reads).
README_PARSE_ONLY = {
    "bash scripts/run-local.sh": "starts the gateway until stopped (tests/test_readme_commands.py runs it)",
}
LOCAL_GATEWAY = re.compile(r"(?:https?://)?(?:127\.0\.0\.1|localhost):8080")


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the repository
    line: int
    language: str  # python | shell | node
    code: str
    runs: bool

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def samples_in(path: str, text: str, readme_marks: dict[str, str] | None = None) -> list[Sample]:
    """The Python, shell and JavaScript blocks of one Markdown text, in order."""
    found = []
    for match in FENCE.finditer(text):
        language = LANGUAGES.get(match["lang"].lower())
        if language is None:
            continue
        code = textwrap.dedent(match["body"])
        if match["lang"].lower() == "console":  # only the commands after a `$ ` prompt
            code = "\n".join(ln[2:] for ln in code.splitlines() if ln.startswith("$ ")) + "\n"
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        first = code.strip().splitlines()[0] if code.strip() else ""
        marked = bool(PARSE_ONLY.search(before)) or any(
            first.startswith(k) for k in (readme_marks or {})
        )
        line = text.count("\n", 0, match.start()) + 1
        found.append(Sample(path, line, language, code, runs=not marked))
    return found


def all_samples() -> list[Sample]:
    found = samples_in("README.md", (REPO / "README.md").read_text(), README_PARSE_ONLY)
    for page in sorted((REPO / "docs").rglob("*.md")):
        found += samples_in(str(page.relative_to(REPO)), page.read_text())
    return found


SAMPLES = all_samples()


@pytest.mark.fast
def test_samples_are_found_with_their_marks() -> None:
    text = textwrap.dedent(
        """\
        ```python
        print(1)
        ```
        <!-- sample: parse-only (a server) -->
        ```bash
        serve --forever
        ```
        === "Node"

            ```js
            console.log(1)
            ```
        ```toml
        a = 1
        ```
        ```console
        $ echo hi
        hi
        ```
        """
    )
    found = samples_in("x.md", text)
    assert [(s.line, s.language, s.runs) for s in found] == [
        (1, "python", True), (5, "shell", False), (10, "node", True), (16, "shell", True),
    ]  # fmt: skip
    assert found[2].code == "console.log(1)\n"
    assert found[3].code == "echo hi\n"


@pytest.mark.fast
def test_every_readme_mark_names_a_block_and_the_docs_have_samples() -> None:
    readme = [s for s in SAMPLES if s.path == "README.md"]
    firsts = [s.code.strip().splitlines()[0] for s in readme]
    for mark in README_PARSE_ONLY:
        assert any(f.startswith(mark) for f in firsts), f"README_PARSE_ONLY: no block {mark!r}"
    languages = {s.language for s in SAMPLES if s.path.startswith("docs/") and s.runs}
    assert languages == {"python", "shell", "node"}


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.fast
def test_settings_table_has_every_setting_and_fails_on_a_gap_or_a_stale_line() -> None:
    from mkdocs.exceptions import PluginError

    from shared.settings import Settings

    hooks = _hooks()
    variables = [row[0] for row in hooks.setting_rows()]
    assert len(variables) == len(set(variables))
    assert {"IMAGEGATE_SYNC_BUDGET_SECONDS", "PORT", "IMAGEGATE_S3_BUCKET"} <= set(variables)
    assert len(variables) >= len(Settings.model_fields) - 3  # all but the 3 not from env
    meanings = hooks.setting_meanings()
    del meanings["IMAGEGATE_SYNC_BUDGET_SECONDS"]
    with pytest.raises(PluginError, match="IMAGEGATE_SYNC_BUDGET_SECONDS has no description"):
        hooks.setting_rows(meanings)
    with pytest.raises(PluginError, match="IMAGEGATE_NO_SUCH_THING"):
        hooks.setting_rows({**hooks.setting_meanings(), "IMAGEGATE_NO_SUCH_THING": "x"})


@pytest.mark.fast
def test_api_reference_has_every_operation_of_the_openapi_document() -> None:
    from api.openapi import build_openapi

    page = _hooks().api_reference()
    for path, item in build_openapi()["paths"].items():
        for method in item.keys() & {"get", "post", "put", "patch", "delete"}:
            assert f"## `{method.upper()} {path}`" in page
    for name in build_openapi()["components"]["schemas"]:
        assert f"### {name}\n" in page


@pytest.mark.fast
def test_lua_page_has_every_script_with_its_keys() -> None:
    page = _hooks().lua_reference()
    for script in (REPO / "shared" / "lua").glob("*.lua"):
        assert f"## `{script.name}`" in page
    assert "KEYS[1] job record" in page  # job_claim.lua's header, as written


def test_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, missing anchors, pages outside the nav, a setting without a
    description: each a warning, and --strict turns warnings into a failed build."""
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "/v1/images/generations" in api
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    assert "IMAGEGATE_SYNC_BUDGET_SECONDS" in settings


def _argv(sample: Sample, file: Path) -> list[str]:
    if sample.language == "python":
        return [str(BIN / "python"), str(file)]
    if sample.language == "shell":
        return ["bash", "-e", "-o", "pipefail", str(file)]
    return ["node", str(file)]


def _parse(sample: Sample, file: Path) -> list[str]:
    if sample.language == "python":
        return [str(BIN / "python"), "-m", "py_compile", str(file)]
    if sample.language == "shell":
        return ["bash", "-n", str(file)]
    return ["node", "--check", str(file)]


@pytest.fixture(scope="module")
def sample_env(gateway: str, stack_env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **stack_env,
        "KEY": create_key(stack_env, "docs-samples")["key"],
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


@pytest.mark.parametrize("sample", [s for s in SAMPLES if not s.runs], ids=lambda s: s.id)
def test_marked_sample_parses(sample: Sample, tmp_path: Path) -> None:
    if sample.language == "node" and not shutil.which("node"):
        pytest.fail("node is needed to check the JavaScript samples")
    file = tmp_path / {"python": "s.py", "shell": "s.sh", "node": "s.mjs"}[sample.language]
    file.write_text(sample.code)
    done = subprocess.run(_parse(sample, file), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{sample.id} does not parse:\n{done.stderr}"


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.runs], ids=lambda s: s.id)
def test_sample_runs_against_the_stack(
    sample: Sample, gateway: str, sample_env: dict[str, str], tmp_path: Path
) -> None:
    code = LOCAL_GATEWAY.sub(gateway, sample.code)
    if sample.language == "python":
        code = 'import os\nKEY = os.environ["KEY"]\n' + code
    file = tmp_path / {"python": "s.py", "shell": "s.sh", "node": "s.mjs"}[sample.language]
    file.write_text(code)
    done = subprocess.run(
        _argv(sample, file), cwd=tmp_path, env=sample_env, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{sample.id} ({sample.language}) failed with {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
