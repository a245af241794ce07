"""The official MCP conformance suite's authorization-server scenarios against the gateway:
`authorization-server-metadata-endpoint` and `authorization-code-grant`.

The code-grant scenario prints an authorization URL and waits for a browser; the test
reads it from the suite's stdout, walks the gateway's consent page and local login with
idp.Browser, and finally GETs the callback URL so the suite's own listener receives it.
Every check the suite reports must be SUCCESS."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

from auth_flow import LOCAL_PASSWORD, approve_consent, create_local_admin, local_login, register, stop_at
from e2e_util import tiny_upstream
from gateway import ROOT, free_port, running_gateway, stop
from idp import Browser, query_params

CONFORMANCE_BIN = os.environ.get("CONFORMANCE_BIN") or str(ROOT / "scripts" / "conformance")
USER = "conformance-admin"
TIMEOUT = 120  # guard against hangs only
EXPECTED_CHECKS = {"authorization-server-metadata", "authorization-server-metadata-cimd", "authorization-code-grant"}


class Suite:
    """The conformance CLI as a child process; stdout collected line by line."""

    def __init__(self, args: list[str]):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([CONFORMANCE_BIN, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "NO_COLOR": "1"})
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float = TIMEOUT) -> str:
        """The first output line satisfying pred (waiting for it)."""
        def found() -> str | None:
            return next((ln.strip() for ln in self.lines if pred(ln.strip())), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout)
            hit = found()
        assert hit is not None, f"conformance output lacks the expected line:\n{self.output()}"
        return hit

    def output(self) -> str:
        return "".join(self.lines)


def test_conformance_authorization_server(tmp_path: Path) -> None:
    config = {
        "auth": {"mode": "required", "local_login": True},
        "upstreams": [tiny_upstream("tiny", "auth-conformance")],
        "virtual_servers": [{"name": "dev", "upstreams": [{"upstream": "tiny"}]}],
    }
    port = free_port()
    callback = f"http://127.0.0.1:{port}/callback"
    out_dir = tmp_path / "results"
    with running_gateway(config) as gw:
        create_local_admin(gw, USER)
        client = register(gw.base, callback, token_endpoint_auth_method="none", client_name="conformance suite")
        assert "client_secret" not in client, client
        suite = Suite(["authorization", "--url", gw.base, "--client-id", client["client_id"],
                       "--resource", gw.url("dev"), "-p", str(port), "-o", str(out_dir)])
        try:
            auth_url = suite.wait_for(lambda ln: ln.startswith(f"{gw.base}/oauth/authorize?"))
            suite.wait_for(lambda ln: ln.startswith(f"Callback server started: http://127.0.0.1:{port}"))
            req = query_params(auth_url)
            assert req["client_id"] == client["client_id"] and req["redirect_uri"] == callback, req
            assert req["resource"] == gw.url("dev"), req
            with Browser() as b:
                landing = approve_consent(b, auth_url, stop=stop_at(callback))
                final = local_login(b, landing, USER, LOCAL_PASSWORD, callback)
                assert query_params(final).get("code"), final
                # Hand the redirect to the suite's listener, as the browser would.
                r = b.client.get(final)
                assert r.status_code == 200, r.text
            rc = suite.proc.wait(TIMEOUT)
        finally:
            stop(suite.proc, grace=5)
        log = gw.log()

    text = suite.output()
    files = sorted(out_dir.rglob("checks.json"))
    assert len(files) == 2, f"expected one checks.json per scenario, got {files}:\n{text}"
    checks = [c for f in files for c in json.loads(f.read_text())]
    statuses = {c["id"]: c["status"] for c in checks}
    assert EXPECTED_CHECKS <= set(statuses), f"missing checks: {statuses}\n{text}"
    failed = {c["id"]: c.get("errorMessage") for c in checks if c["status"] != "SUCCESS"}
    assert not failed, f"non-SUCCESS checks: {json.dumps(failed, indent=1)}\n{text}\n{log[-3000:]}"
    assert rc == 0, text
    assert "Total: 3 passed, 0 failed" in text, text
