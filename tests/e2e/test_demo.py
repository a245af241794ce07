"""`portcullis demo` works with no manual steps: it serves the `demo` virtual server over
the real reference servers and prints what to paste into a client."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from gateway import BINARY, ROOT, free_port, stop
from mcp import Client

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
            if "claude mcp add" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(60), "".join(lines)
        out = "".join(lines)
        url = f"http://127.0.0.1:{port}/mcp/demo"
        assert url in out and '"mcpServers"' in out, out
        assert (tmp_path / "demo" / "portcullis.db").exists()
        # The first connection may wait for npx to fetch the servers.
        deadline = time.monotonic() + 240
        while True:
            try:
                async with Client(url, mode="legacy") as client:
                    tools = {t.name for t in (await client.list_tools()).tools}
                    assert {"ev_echo", "files_read_text_file"} <= tools, tools
                    assert "files_move_file" not in tools, "hidden in the demo configuration"
                    result = await client.call_tool("ev_echo", {"message": "hello demo"})
                    assert "hello demo" in result.content[0].text
                    files = await client.call_tool("files_read_text_file", {"path": str((tmp_path / "demo" / "files" / "welcome.txt").resolve())})
                    assert "Portcullis demo" in files.content[0].text, files
                break
            except Exception:  # noqa: BLE001 - npx may still be fetching the servers
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    finally:
        stop(proc)
    assert proc.returncode == 0, "".join(lines[-50:])
