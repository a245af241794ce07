"""Era bridging: a legacy client in front of a 2026-07-28-only upstream gets the
upstream's input-required results as ordinary sampling/elicitation requests, and a
2026-07-28 client in front of a legacy-only upstream works for calls that need no
mid-call server request."""

from __future__ import annotations

from contextlib import contextmanager

import mcp_types as types
import pytest
from fixture_helpers import running_fixture
from gateway import running_gateway
from mcp import Client

pytestmark = pytest.mark.anyio


@contextmanager
def gateway_over(era: str):
    with running_fixture("http", era) as url:
        config = {
            "upstreams": [{"name": "fx", "transport": "streamable_http", "url": url}],
            "virtual_servers": [{"name": "v", "upstreams": [{"upstream": "fx", "prefix": ""}]}],
        }
        with running_gateway(config) as gw:
            yield gw


async def sampling_cb(ctx, params):
    return types.CreateMessageResult(
        role="assistant", model="m", content=types.TextContent(type="text", text="bridged-sample"), stop_reason="endTurn"
    )


def elicitation_cb(action: str):
    async def cb(ctx, params):
        if action == "accept":
            return types.ElicitResult(action="accept", content={"username": "alice", "email": "a@example.com"})
        return types.ElicitResult(action=action)

    return cb


def text_of(result) -> str:
    return " ".join(c.text for c in result.content if getattr(c, "type", "") == "text")


@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_legacy_client_modern_only_upstream(action: str):
    with gateway_over("modern") as gw:
        async with Client(
            gw.url("v"),
            mode="legacy",
            sampling_callback=sampling_cb,
            elicitation_callback=elicitation_cb(action),
        ) as client:
            assert client.protocol_version == "2025-11-25"
            sampled = await client.call_tool("test_sampling", {"prompt": "hello"})
            assert "bridged-sample" in text_of(sampled), sampled
            elicited = await client.call_tool("test_elicitation", {"message": "who?"})
            assert action in text_of(elicited), elicited
            progress: list[float] = []

            async def on_progress(p, total, msg):
                progress.append(p)

            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            assert progress == sorted(progress) and len(progress) >= 2, progress


async def test_legacy_client_without_capability_gets_clear_error():
    """The upstream needs sampling, the client never declared it: a precise error."""
    with gateway_over("modern") as gw:
        async with Client(gw.url("v"), mode="legacy") as client:
            with pytest.raises(Exception) as err:
                result = await client.call_tool("test_sampling", {"prompt": "hello"})
                if result.is_error:
                    raise RuntimeError(text_of(result))
            assert "sampling" in str(err.value)


async def test_modern_client_legacy_only_upstream():
    with gateway_over("legacy") as gw:
        async with Client(gw.url("v"), mode="2026-07-28") as client:
            assert client.protocol_version == "2026-07-28"
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "test_simple_text" in tools
            result = await client.call_tool("test_simple_text", {})
            assert "simple text" in text_of(result)
            read = await client.read_resource("test://static-text")
            assert read.contents and read.contents[0].uri == "test://static-text"
