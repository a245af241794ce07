"""Real third-party MCP servers behind the gateway, driven by the real PyPI `mcp` client.

- npm `server-everything` as a stdio and as a Streamable HTTP upstream, with the client in
  the legacy (initialize) era and pinned to 2026-07-28;
- npm `server-filesystem` as a stdio upstream rooted in a temporary directory;
- the deprecated HTTP+SSE transport of the gateway with the client's SSE transport.

A legacy upstream cannot ask a stateless 2026-07-28 client for sampling mid-call, so the
modern runs only require that such a tool fails instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from gateway import Gateway
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from peers import (MODES, TIMEOUT, Eliciter, Sampler, client, everything_stdio, filesystem_stdio, live_gateway,
                   http_upstream, one_server, running_everything_http, text_of)

pytestmark = pytest.mark.anyio

ECHO = "everything_echo"
LONG_OP = "everything_trigger-long-running-operation"
SAMPLE = "everything_trigger-sampling-request"
ELICIT = "everything_trigger-elicitation-request"
DOC_URI = "everything+demo://resource/static/document/architecture.md"


def log_tail(gw: Gateway) -> str:
    return "\ngateway log:\n" + gw.log()[-4000:]


@pytest.fixture(scope="module", params=["stdio", "http"])
def everything(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """A gateway whose virtual server `v` fronts server-everything over stdio or HTTP."""
    with ExitStack() as stack:
        if request.param == "stdio":
            upstream = everything_stdio()
        else:
            upstream = http_upstream("everything", stack.enter_context(running_everything_http()))
        yield stack.enter_context(live_gateway(one_server(upstream)))


# --- server-everything ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_everything_tools_are_prefixed_and_echo_works(everything: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), mode) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool(ECHO, {"message": "hello through the gate"})
    assert names and all(n.startswith("everything_") for n in names), names
    assert {ECHO, LONG_OP, "everything_get-sum"} <= set(names), names
    assert not result.is_error, text_of(result) + log_tail(everything)
    assert text_of(result) == "Echo: hello through the gate"


@pytest.mark.parametrize("mode", MODES)
async def test_everything_progress_notifications_arrive(everything: Gateway, mode: str) -> None:
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), mode) as c:
            result = await c.call_tool(LONG_OP, {"duration": 1, "steps": 3}, progress_callback=on_progress)
    assert not result.is_error, text_of(result) + log_tail(everything)
    assert "Steps: 3" in text_of(result)
    assert seen == [(1, 3), (2, 3), (3, 3)], f"progress seen: {seen}" + log_tail(everything)


@pytest.mark.parametrize("mode", MODES)
async def test_everything_resources_list_and_read_namespaced(everything: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), mode) as c:
            uris = [str(r.uri) for r in (await c.list_resources()).resources]
            read = await c.read_resource(DOC_URI)
    assert uris and all(u.startswith("everything+") for u in uris), uris
    assert DOC_URI in uris, uris
    assert [str(x.uri) for x in read.contents] == [DOC_URI]
    assert "Architecture" in text_of(read)


@pytest.mark.parametrize("mode", MODES)
async def test_everything_prompts_list_and_get(everything: Gateway, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), mode) as c:
            names = [p.name for p in (await c.list_prompts()).prompts]
            prompt = await c.get_prompt("everything_args-prompt", {"city": "Lisbon", "state": "PT"})
    assert {"everything_simple-prompt", "everything_args-prompt"} <= set(names), names
    assert all(n.startswith("everything_") for n in names), names
    assert text_of(prompt) == "What's weather in Lisbon, PT?"


async def test_everything_sampling_legacy(everything: Gateway) -> None:
    sampler = Sampler("SAMPLED-ANSWER-42")
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), "legacy", sampling_callback=sampler) as c:
            assert SAMPLE in [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool(SAMPLE, {"prompt": "name a colour", "maxTokens": 20})
    assert not result.is_error, text_of(result) + log_tail(everything)
    assert len(sampler.requests) == 1
    assert "name a colour" in sampler.requests[0].messages[0].content.text
    assert "SAMPLED-ANSWER-42" in text_of(result)


async def test_everything_sampling_modern_fails_instead_of_hanging(everything: Gateway) -> None:
    sampler = Sampler("never used")
    failed = False
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), "2026-07-28", sampling_callback=sampler) as c:
            try:
                failed = (await c.call_tool(SAMPLE, {"prompt": "x"})).is_error
            except MCPError:
                failed = True
            # The connection is still usable afterwards.
            echo = await c.call_tool(ECHO, {"message": "still here"})
    assert failed, "a sampling tool through a legacy upstream must fail for a stateless client"
    assert text_of(echo) == "Echo: still here"


@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_everything_elicitation_legacy(everything: Gateway, action: str) -> None:
    eliciter = Eliciter(action, {"name": "Ada Lovelace", "check": True})
    with anyio.fail_after(TIMEOUT):
        async with client(everything.url("v"), "legacy", elicitation_callback=eliciter) as c:
            result = await c.call_tool(ELICIT, {})
    assert not result.is_error, text_of(result) + log_tail(everything)
    assert eliciter.messages == ["Please provide inputs for the following fields:"]
    text = text_of(result)
    if action == "accept":
        assert "User provided the requested information" in text and "- Name: Ada Lovelace" in text, text
    else:
        assert "User declined" in text and "Ada" not in text, text


# --- server-filesystem ------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    root = tmp_path_factory.mktemp("fsroot").resolve()
    (root / "hello.txt").write_text("hello from disk\n")
    (root / "sub").mkdir()
    with live_gateway(one_server(filesystem_stdio(root))) as gw:
        yield gw, root


@pytest.mark.parametrize("mode", MODES)
async def test_filesystem_list_and_read(files: tuple[Gateway, Path], mode: str) -> None:
    gw, root = files
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url("v"), mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            listing = await c.call_tool("filesystem_list_directory", {"path": str(root)})
            read = await c.call_tool("filesystem_read_text_file", {"path": str(root / "hello.txt")})
    assert {"filesystem_list_directory", "filesystem_write_file", "filesystem_read_text_file"} <= names
    assert not listing.is_error, text_of(listing) + log_tail(gw)
    assert "[FILE] hello.txt" in text_of(listing) and "[DIR] sub" in text_of(listing)
    assert text_of(read) == "hello from disk\n"


async def test_filesystem_write_lands_on_disk(files: tuple[Gateway, Path]) -> None:
    gw, root = files
    target = root / "sub" / "written.txt"
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url("v"), "legacy") as c:
            wrote = await c.call_tool("filesystem_write_file", {"path": str(target), "content": "via gateway"})
            back = await c.call_tool("filesystem_read_text_file", {"path": str(target)})
    assert not wrote.is_error, text_of(wrote) + log_tail(gw)
    assert target.read_text() == "via gateway"
    assert text_of(back) == "via gateway"


async def test_filesystem_refuses_path_outside_root(files: tuple[Gateway, Path]) -> None:
    gw, root = files
    outside = root.parent / "outside-secret.txt"
    outside.write_text("must not be readable")
    with anyio.fail_after(TIMEOUT):
        async with client(gw.url("v"), "legacy") as c:
            refused = await c.call_tool("filesystem_read_text_file", {"path": str(outside)})
            after = await c.call_tool("filesystem_read_text_file", {"path": str(root / "hello.txt")})
    assert refused.is_error, text_of(refused)
    assert "Access denied" in text_of(refused) and "must not be readable" not in text_of(refused)
    # The gateway survived and still serves the session.
    assert text_of(after) == "hello from disk\n"
    assert httpx.get(f"{gw.base}/healthz").status_code == 200
    assert gw.proc.poll() is None


# --- deprecated HTTP+SSE transport --------------------------------------------------------


@pytest.fixture(scope="module")
def everything_stdio_gw() -> Iterator[Gateway]:
    with live_gateway(one_server(everything_stdio())) as gw:
        yield gw


@pytest.mark.parametrize("path", ["/mcp/v/sse", "/sse"])
async def test_legacy_sse_transport_list_and_call(everything_stdio_gw: Gateway, path: str) -> None:
    gw = everything_stdio_gw
    with anyio.fail_after(TIMEOUT):
        async with client(sse_client(gw.base + path, timeout=TIMEOUT), "legacy") as c:
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool(ECHO, {"message": "over sse"})
    assert ECHO in names and all(n.startswith("everything_") for n in names), names
    assert text_of(result) == "Echo: over sse", text_of(result) + log_tail(gw)
