"""Revocation and offboarding take effect on the next request and close open streams:
a revoked personal token, a disabled user, a user removed from the group that granted
access. Changes made by another process (the CLI) arrive through the change feed."""

from __future__ import annotations

import threading

import httpx
import pytest
from auth_util import (auth_config, create_token, create_user, mcp_init, oauth_tokens)
from gateway import running_gateway

STREAM_CLOSE_BOUND = 20.0  # generous upper bound so a broken gateway fails instead of hanging


class OpenStream:
    """A legacy session's GET stream, read in a thread until the server ends it."""

    def __init__(self, url: str, token: str, session: str):
        self.ended = threading.Event()
        self.opened = threading.Event()
        self.status: int | None = None
        self.error: Exception | None = None
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream",
                   "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}

        def run() -> None:
            try:
                with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(5, read=None)) as r:
                    self.status = r.status_code
                    self.opened.set()
                    for _ in r.iter_bytes():
                        pass
            except Exception as e:  # noqa: BLE001 - a reset also counts as closed
                self.error = e
            finally:
                self.opened.set()
                self.ended.set()

        threading.Thread(target=run, daemon=True).start()
        assert self.opened.wait(10), "stream did not open"
        assert self.status == 200, self.status


def open_session(gw, vs: str, token: str) -> str:
    r = mcp_init(gw, vs, token)
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


def token_id_of(gw, name: str) -> str:
    out = gw.cli("token", "list")
    lines = [line for line in out.splitlines() if name in line]
    assert lines, out
    for word in lines[0].replace(",", " ").replace('"', " ").split():
        if len(word) == 32 and all(c in "0123456789abcdef" for c in word):
            return word
    raise AssertionError(f"no id for {name!r} in {lines[0]!r}")


def test_revoked_token_closes_its_stream_and_is_refused() -> None:
    with running_gateway(auth_config()) as gw:
        create_user(gw, "erin")
        pat = create_token(gw, "erin", "vs:alpha", name="erin-laptop")
        other = create_token(gw, "erin", "vs:alpha", name="erin-ci")
        sid = open_session(gw, "alpha", pat)
        stream = OpenStream(gw.url("alpha"), pat, sid)
        assert not stream.ended.wait(0.5), "stream must stay open while the token is valid"
        gw.cli("token", "revoke", token_id_of(gw, "erin-laptop"))
        assert stream.ended.wait(STREAM_CLOSE_BOUND), "the revoked token's stream stayed open"
        r = mcp_init(gw, "alpha", pat)
        assert r.status_code == 401 and "revoked" in r.headers["www-authenticate"]
        # Nobody else is touched: the person's other token still works.
        assert mcp_init(gw, "alpha", other).status_code == 200


def test_disabled_user_loses_oauth_and_token_access_and_sessions() -> None:
    with running_gateway(auth_config()) as gw:
        create_user(gw, "frank")
        create_user(gw, "grace")
        _, tokens = oauth_tokens(gw, "alpha", "frank")
        access = tokens["access_token"]
        sid = open_session(gw, "alpha", access)
        stream = OpenStream(gw.url("alpha"), access, sid)
        grace = create_token(gw, "grace", "vs:alpha")
        gw.cli("user", "disable", "frank")
        assert stream.ended.wait(STREAM_CLOSE_BOUND), "the disabled user's stream stayed open"
        assert mcp_init(gw, "alpha", access).status_code == 401
        # Refresh is refused too.
        r = httpx.post(f"{gw.base}/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                                         "client_id": tokens_client(gw, tokens)})
        assert r.status_code in (400, 401), r.text
        assert mcp_init(gw, "alpha", grace).status_code == 200


def tokens_client(gw, tokens) -> str:
    import base64
    import json
    payload = tokens["access_token"].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["client_id"]


def test_group_removal_revokes_access_to_group_servers() -> None:
    cfg = auth_config([
        {"name": "eng-only", "access": {"groups": ["eng"]}, "upstreams": [{"upstream": "tiny", "prefix": ""}]},
        {"name": "open", "upstreams": [{"upstream": "tiny", "prefix": ""}]},
    ])
    with running_gateway(cfg) as gw:
        create_user(gw, "root")
        create_user(gw, "heidi")
        admin = create_token(gw, "root", "admin", name="root-admin")
        api = httpx.Client(base_url=f"{gw.base}/api/v1", headers={"Authorization": f"Bearer {admin}"})
        users = api.get("/users").json()
        users = users.get("users", users) if isinstance(users, dict) else users
        heidi = next(u for u in users if u["username"] == "heidi")
        g = api.post("/groups", json={"display_name": "eng"})
        assert g.status_code == 201, g.text
        gid = g.json()["id"]
        assert api.post(f"/groups/{gid}/members", json={"user_id": heidi["id"]}).status_code in (200, 201, 204)
        pat = create_token(gw, "heidi", "vs:*", name="heidi-all")
        sid = open_session(gw, "eng-only", pat)
        stream = OpenStream(gw.url("eng-only"), pat, sid)
        open_sid = open_session(gw, "open", pat)
        open_stream = OpenStream(gw.url("open"), pat, open_sid)
        r = api.delete(f"/groups/{gid}/members/{heidi['id']}")
        assert r.status_code in (200, 204), r.text
        assert stream.ended.wait(STREAM_CLOSE_BOUND), "stream stayed open after group removal"
        r = mcp_init(gw, "eng-only", pat)
        assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
        # Access that did not depend on the group stays.
        assert not open_stream.ended.is_set()
        assert mcp_init(gw, "open", pat).status_code == 200


@pytest.mark.parametrize("vs_access", [{"users": ["ivan"]}])
def test_user_allow_list(vs_access) -> None:
    cfg = auth_config([{"name": "ivan-only", "access": vs_access, "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
    with running_gateway(cfg) as gw:
        create_user(gw, "ivan")
        create_user(gw, "judy")
        assert mcp_init(gw, "ivan-only", create_token(gw, "ivan", "vs:ivan-only")).status_code == 200
        assert mcp_init(gw, "ivan-only", create_token(gw, "judy", "vs:ivan-only")).status_code == 403


def test_stream_ends_when_its_access_token_expires() -> None:
    with running_gateway(auth_config(access_token_ttl_secs=2)) as gw:
        create_user(gw, "kim")
        _, tokens = oauth_tokens(gw, "alpha", "kim")
        sid = open_session(gw, "alpha", tokens["access_token"])
        stream = OpenStream(gw.url("alpha"), tokens["access_token"], sid)
        assert stream.ended.wait(STREAM_CLOSE_BOUND), "the stream outlived its access token"
        assert mcp_init(gw, "alpha", tokens["access_token"]).status_code == 401
