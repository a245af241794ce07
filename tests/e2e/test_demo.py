"""`portcullis demo` works with no manual steps: it serves the `demo` virtual server over
the real reference servers and prints what to paste into a client."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import httpx
from gateway import BINARY, ROOT, free_port, stop
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

pytestmark = pytest.mark.anyio


async def test_demo_serves_real_upstreams(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BINARY), "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("curl -H"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(60), "".join(lines)
        out = "".join(lines)
        url = f"http://127.0.0.1:{port}/mcp/demo"
        assert url in out and '"mcpServers"' in out, out
        assert (tmp_path / "demo" / "portcullis.db").exists()
        # Authentication is on: the printed admin login works and a token is printed.
        assert f"http://127.0.0.1:{port}/login" in out, out
        password = next(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("password:"))
        token = next(w for line in lines for w in line.split() if w.startswith("pcp_"))
        assert httpx.post(url, json={}, headers={"Accept": "application/json, text/event-stream"}).status_code == 401
        page = httpx.post(f"http://127.0.0.1:{port}/login", data={"username": "admin", "password": password})
        assert page.status_code == 200 and url in page.text, page.text
        bad = httpx.post(f"http://127.0.0.1:{port}/login", data={"username": "admin", "password": password + "x"})
        assert bad.status_code == 401
        # The first connection may wait for npx to fetch the servers.
        deadline = time.monotonic() + 240
        while True:
            try:
                async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http, \
                        Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                    tools = {t.name for t in (await client.list_tools()).tools}
                    assert {"ev_echo", "files_read_text_file"} <= tools, tools
                    assert "files_move_file" not in tools, "hidden in the demo configuration"
                    result = await client.call_tool("ev_echo", {"message": "hello demo"})
                    assert "hello demo" in result.content[0].text
                    files = await client.call_tool("files_read_text_file", {"path": str((tmp_path / "demo" / "files" / "welcome.txt").resolve())})
                    assert "Portcullis demo" in files.content[0].text, files
                    escape = str(tmp_path / "demo" / "files" / ".." / "portcullis.db")
                    denied = None
                    try:
                        await client.call_tool("files_read_text_file", {"path": escape})
                    except Exception as e:  # noqa: BLE001 - the SDK raises the JSON-RPC error
                        denied = str(e)
                    assert denied and "denied by policy" in denied, denied
                break
            except Exception:  # noqa: BLE001 - npx may still be fetching the servers
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    finally:
        stop(proc)
    assert proc.returncode == 0, "".join(lines[-50:])
