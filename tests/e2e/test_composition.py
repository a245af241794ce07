"""One virtual server composing three upstreams, driven by the PyPI `mcp` client:

- server-everything over stdio (default prefix, per-tool overrides, a hidden prompt);
- server-filesystem over stdio, named `file_system` (default prefix becomes `file-system`);
- the conformance fixture over Streamable HTTP with the explicit prefix `conf`.

Also the name-collision and syntax checks of `portcullis check`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixture_helpers import running_fixture
from gateway import BINARY, Gateway, running_gateway
from mcp.shared.exceptions import MCPError
from peers import (MODES, TIMEOUT, client, everything_stdio, filesystem_stdio, http_upstream, live_gateway,
                   text_of)

pytestmark = pytest.mark.anyio

VS = "mix"
PREFIXES = ("everything_", "file-system_", "conf_")
SAFE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
FIXED = "FIXED-BY-GATEWAY"


def compose(fixture_url: str, root: Path) -> dict:
    overrides = {
        "echo": {"fixed_arguments": {"message": FIXED}},
        "get-sum": {"rename": "add_numbers"},
        "get-env": {"hide": True},
        "get-tiny-image": {"description": "A tiny picture, described by the gateway"},
    }
    return {
        "upstreams": [everything_stdio(), filesystem_stdio(root, "file_system"), http_upstream("fixture", fixture_url)],
        "virtual_servers": [{"name": VS, "upstreams": [
            {"upstream": "everything", "tools": overrides, "hide_prompts": ["completable-prompt"]},
            {"upstream": "file_system"},
            {"upstream": "fixture", "prefix": "conf"},
        ]}],
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("composed-root").resolve()
    (root / "note.txt").write_text("composed\n")
    return root


@pytest.fixture(scope="module")
def config(root: Path) -> Iterator[dict]:
    with running_fixture("http") as url:
        yield compose(url, root)


@pytest.fixture(scope="module")
def gw(config: dict) -> Iterator[Gateway]:
    with live_gateway(config) as g:
        yield g


async def tools_of(url: str, mode: str = "legacy") -> list[Any]:
    with anyio.fail_after(TIMEOUT):
        async with client(url, mode) as c:
            return (await c.list_tools(cache_mode="bypass")).tools


async def call(url: str, name: str, args: dict, mode: str = "legacy") -> tuple[bool, str]:
    """(failed, text): a JSON-RPC error and an `isError` result both count as failures."""
    with anyio.fail_after(TIMEOUT):
        async with client(url, mode) as c:
            try:
                r = await c.call_tool(name, args)
            except MCPError as e:
                return True, e.message
    return bool(r.is_error), text_of(r)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_default_and_explicit_prefixes_route_to_each_upstream(gw: Gateway, root: Path, mode: str) -> None:
    names = [t.name for t in await tools_of(gw.url(VS), mode)]
    assert all(n.startswith(PREFIXES) or n == "add_numbers" for n in names), names
    for prefix in PREFIXES:
        assert any(n.startswith(prefix) for n in names), f"nothing under {prefix}: {names}"
    assert not any(n.startswith(("fixture_", "file_system_")) for n in names), names
    assert await call(gw.url(VS), "conf_test_simple_text", {}, mode) == (
        False, "This is a simple text response for testing.")
    failed, text = await call(gw.url(VS), "file-system_read_text_file",
                              {"path": str(root / "note.txt")}, mode)
    assert (failed, text) == (False, "composed\n"), gw.log()[-3000:]


async def test_every_exposed_name_is_client_safe(gw: Gateway) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), "legacy") as c:
            names = [t.name for t in (await c.list_tools()).tools]
            names += [p.name for p in (await c.list_prompts()).prompts]
    assert len(names) > 50
    assert [n for n in names if not SAFE_NAME.match(n)] == []
    assert len(set(names)) == len(names), "duplicate exposed names"


@pytest.mark.parametrize("mode", MODES)
async def test_order_is_deterministic(gw: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), mode) as c:
            first = [t.name for t in (await c.list_tools(cache_mode="bypass")).tools]
            second = [t.name for t in (await c.list_tools(cache_mode="bypass")).tools]
    third = [t.name for t in await tools_of(gw.url(VS), mode)]
    assert first == second == third


async def test_names_are_stable_across_restarts(gw: Gateway, config: dict) -> None:
    before = [(t.name, t.description) for t in await tools_of(gw.url(VS))]
    for _ in range(2):
        with running_gateway(config) as again:
            assert [(t.name, t.description) for t in await tools_of(again.url(VS))] == before


# --- per-tool overrides -------------------------------------------------------------------


async def test_renamed_tool_calls_the_original(gw: Gateway) -> None:
    names = {t.name for t in await tools_of(gw.url(VS))}
    assert "add_numbers" in names and "everything_get-sum" not in names, sorted(names)
    assert await call(gw.url(VS), "add_numbers", {"a": 2, "b": 3}) == (False, "The sum of 2 and 3 is 5.")
    assert (await call(gw.url(VS), "everything_get-sum", {"a": 2, "b": 3}))[0]


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_tool_is_absent_and_uncallable(gw: Gateway, mode: str) -> None:
    names = {t.name for t in await tools_of(gw.url(VS), mode)}
    assert "everything_get-env" not in names and "everything_get-annotated-message" in names
    for name in ("everything_get-env", "get-env"):
        failed, text = await call(gw.url(VS), name, {}, mode)
        assert failed, f"{name} was callable: {text[:200]}"
        assert "PATH" not in text


async def test_description_override_shows(gw: Gateway) -> None:
    tools = {t.name: t for t in await tools_of(gw.url(VS))}
    assert tools["everything_get-tiny-image"].description == "A tiny picture, described by the gateway"
    assert tools["everything_echo"].description == "Echoes back the input string"


@pytest.mark.parametrize("mode", MODES)
async def test_fixed_arguments_are_hidden_and_enforced(gw: Gateway, mode: str) -> None:
    echo = {t.name: t for t in await tools_of(gw.url(VS), mode)}["everything_echo"]
    schema = echo.input_schema
    assert "message" not in schema.get("properties", {}), schema
    assert "message" not in schema.get("required", []), schema
    assert await call(gw.url(VS), "everything_echo", {"message": "from the client"}, mode) == (
        False, f"Echo: {FIXED}")
    assert await call(gw.url(VS), "everything_echo", {}, mode) == (False, f"Echo: {FIXED}")


# --- resources, prompts, pagination -----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_prefixed_resources_are_readable(gw: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), mode) as c:
            uris = [str(r.uri) for r in (await c.list_resources()).resources]
            templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
            static = await c.read_resource("conf+test://static-text")
            templated = await c.read_resource("conf+test://template/7/data")
            with pytest.raises(MCPError):
                await c.read_resource("test://static-text")
    assert "conf+test://static-text" in uris and any(u.startswith("everything+demo://") for u in uris), uris
    assert "conf+test://template/{id}/data" in templates, templates
    assert text_of(static) == "This is the content of the static text resource."
    assert [str(x.uri) for x in static.contents] == ["conf+test://static-text"]
    assert "Data for ID: 7" in text_of(templated)


@pytest.mark.parametrize("mode", MODES)
async def test_prompts_are_namespaced(gw: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), mode) as c:
            names = [p.name for p in (await c.list_prompts()).prompts]
            got = await c.get_prompt("conf_test_prompt_with_arguments", {"arg1": "first", "arg2": "second"})
            simple = await c.get_prompt("everything_simple-prompt")
    assert {"everything_simple-prompt", "conf_test_simple_prompt", "conf_test_prompt_with_arguments"} <= set(names)
    assert all(n.startswith(PREFIXES) for n in names), names
    assert "everything_completable-prompt" not in names, "hide_prompts ignored"
    assert "first" in text_of(got) and "second" in text_of(got)
    assert text_of(simple)


@pytest.mark.parametrize("mode", MODES)
async def test_invalid_cursor_is_invalid_params(gw: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), mode) as c:
            for lister in (c.list_tools, c.list_prompts, c.list_resources, c.list_resource_templates):
                with pytest.raises(MCPError) as err:
                    await lister(cursor="not-a-real-cursor", cache_mode="bypass")
                assert err.value.code == -32602, f"{lister.__name__}: {err.value}"


async def test_modern_results_identify_the_virtual_server(gw: Gateway) -> None:
    """Every 2026-07-28 result of one virtual server carries that server's identity,
    whichever upstream answered it."""
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url(VS), "2026-07-28") as c:
            results = {
                "tools/list": await c.list_tools(cache_mode="bypass"),
                "tools/call everything": await c.call_tool("everything_echo", {}),
                "tools/call conf": await c.call_tool("conf_test_simple_text", {}),
                "resources/read conf": await c.read_resource("conf+test://static-text", cache_mode="bypass"),
                "prompts/get conf": await c.get_prompt("conf_test_simple_prompt"),
            }
    infos = {k: (r.meta or {}).get("io.modelcontextprotocol/serverInfo", {}).get("name") for k, r in results.items()}
    assert infos["tools/list"] == f"portcullis/{VS}", infos
    assert set(infos.values()) == {f"portcullis/{VS}"}, f"serverInfo per result: {infos}"


# --- portcullis check: collisions and syntax ----------------------------------------------

UPSTREAMS = """\
upstreams:
  - name: alpha
    transport: stdio
    command: /bin/true
  - name: beta
    transport: stdio
    command: /bin/true
"""


def check(tmp_path: Path, yaml: str) -> subprocess.CompletedProcess:
    path = tmp_path / "check.yaml"
    path.write_text(yaml)
    return subprocess.run([str(BINARY), "check", "--config", str(path)], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin"})


def members(*lines: str) -> str:
    return UPSTREAMS + "virtual_servers:\n  - name: vs\n    upstreams:\n" + "".join(f"{x}\n" for x in lines)


def test_check_accepts_the_valid_baseline(tmp_path: Path) -> None:
    proc = check(tmp_path, members("      - upstream: alpha", "      - upstream: beta"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("yaml", [
    members("      - {upstream: alpha, prefix: same}", "      - {upstream: beta, prefix: same}"),
    UPSTREAMS.replace("alpha", "my_srv").replace("beta", "my-srv")
    + "virtual_servers:\n  - name: vs\n    upstreams: [{upstream: my_srv}, {upstream: my-srv}]\n",
], ids=["explicit", "default-underscore-to-dash"])
def test_check_rejects_shared_prefix(tmp_path: Path, yaml: str) -> None:
    proc = check(tmp_path, yaml)
    assert proc.returncode != 0
    assert "both use prefix" in proc.stderr + proc.stdout, proc.stderr


def test_check_rejects_two_renames_to_one_name(tmp_path: Path) -> None:
    proc = check(tmp_path, members(
        "      - {upstream: alpha, tools: {run: {rename: do_it}}}",
        "      - {upstream: beta, tools: {go: {rename: do_it}}}"))
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "both exposed as" in out and "do_it" in out, out


def test_check_names_line_and_unknown_key(tmp_path: Path) -> None:
    yaml = members("      - upstream: alpha", "        prefx: typo")
    assert yaml.splitlines()[11].strip() == "prefx: typo"  # line 12, 1-based
    proc = check(tmp_path, yaml)
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "prefx" in out and re.search(r"\b(line 12|:12:)", out), out
