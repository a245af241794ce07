"""`portcullis proxy`: one upstream, no config file, unprefixed at http://ADDR/mcp.

The conformance fixture is the upstream over Streamable HTTP, the deprecated HTTP+SSE
transport (`--sse`) and stdio (`-- command args…`); the PyPI `mcp` client lists and calls
through the proxy in both eras. Non-loopback listen addresses are refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import pytest
from conftest import FIXTURE, PYTHON, ROOT
from fixture_helpers import EXPECTED_TOOLS, running_fixture
from gateway import BINARY, free_port, stop
from peers import MODES, TIMEOUT, client, text_of

pytestmark = pytest.mark.anyio

ENV = {**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "0", "PORTCULLIS_LOG": "info"}
ANNOUNCE = re.compile(r"^Proxying at (http://\S+/mcp)$")


class Proxy:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([str(BINARY), "proxy", *args], cwd=ROOT, env=ENV, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.announced = threading.Event()
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            if sink is self.stdout and ANNOUNCE.match(line.strip()):
                self.announced.set()

    def url(self) -> str:
        for line in self.stdout:
            if m := ANNOUNCE.match(line.strip()):
                return m.group(1)
        raise AssertionError(f"no announcement on stdout: {self.output()}")

    def output(self) -> str:
        return f"stdout:\n{''.join(self.stdout)}\nstderr:\n{''.join(self.stderr)[-4000:]}"


@contextmanager
def running_proxy(args: list[str], tmp: Path) -> Iterator[Proxy]:
    port = free_port()
    proxy = Proxy(["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "proxy-data"), *args])
    try:
        if not proxy.announced.wait(30):
            raise AssertionError(f"proxy did not announce itself (exit {proxy.proc.poll()}): {proxy.output()}")
        assert proxy.url() == f"http://127.0.0.1:{port}/mcp"
        yield proxy
    finally:
        stop(proxy.proc)


def upstream_args(kind: str, stack: ExitStack) -> list[str]:
    if kind == "http":
        return [stack.enter_context(running_fixture("http"))]
    if kind == "sse":
        return ["--sse", stack.enter_context(running_fixture("sse"))]
    return ["--", PYTHON, str(FIXTURE.relative_to(ROOT)), "--transport", "stdio"]


@pytest.fixture(scope="module", params=["http", "sse", "stdio"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with ExitStack() as stack:
        args = upstream_args(request.param, stack)
        yield stack.enter_context(running_proxy(args, tmp_path_factory.mktemp(f"proxy-{request.param}")))


@pytest.mark.parametrize("mode", MODES)
async def test_proxy_serves_unprefixed_tools(proxy: Proxy, mode: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(proxy.url(), mode) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool("test_simple_text", {})
    assert EXPECTED_TOOLS <= set(names), f"missing {sorted(EXPECTED_TOOLS - set(names))}\n{proxy.output()}"
    assert not any(n.startswith(("upstream_", "upstream-", "proxy_")) for n in names), names
    assert text_of(result) == "This is a simple text response for testing.", proxy.output()


async def test_proxy_resources_are_unprefixed(proxy: Proxy) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client(proxy.url(), "legacy") as c:
            uris = [str(r.uri) for r in (await c.list_resources()).resources]
            read = await c.read_resource("test://static-text")
    assert "test://static-text" in uris, uris
    assert text_of(read) == "This is the content of the static text resource."


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]"])
def test_proxy_refuses_non_loopback_listen(listen: str, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BINARY), "proxy", "--listen", f"{listen}:{port}", "--data-dir", str(tmp_path),
         "--", PYTHON, str(FIXTURE), "--transport", "stdio"],
        cwd=ROOT, env=ENV, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop(proc)  # never leave a non-loopback listener behind
        out, err = proc.communicate()
        pytest.fail(f"proxy kept running on {listen}:{port}\n{out}\n{err[-3000:]}")
    assert proc.returncode != 0, f"proxy accepted {listen}:{port}\n{out}\n{err}"
    assert "loopback" in (out + err).lower(), out + err
    assert "Proxying at" not in out
