"""Connect a real MCP client (PyPI `mcp` 2.3.0, the SDK in .tools/venv) to an OAuth-protected
MCP server, with the browser step driven by the test.

    async with connect_with_oauth(gw.url("dev"), drive_login) as conn:
        await conn.client.list_tools()           # conn.client: mcp.Client (entered)
        await conn.session.call_tool("x", {})    # conn.session: its ClientSession
        conn.auth_urls, conn.storage.tokens, conn.storage.client_info

`drive_login(authorization_url) -> final_redirect_url` (sync, run in a worker thread; an async
callable is awaited) walks whatever the AS shows (e.g. idp.Browser through the gateway's consent
page and the IdP login) and returns the URL the AS finally redirects to, i.e. the client's
redirect_uri `http://127.0.0.1:<port>/callback?code=…&state=…&iss=…`. Nothing listens there.

What mcp 2.3.0 offers and does (read from mcp/client/auth/oauth2.py and utils.py)
-----------------------------------------------------------------------------
API: `mcp.client.auth.OAuthClientProvider(server_url, client_metadata: OAuthClientMetadata,
storage: TokenStorage, redirect_handler: async (url) -> None, callback_handler: async () ->
AuthorizationCodeResult(code, state, iss), client_metadata_url=None, validate_resource_url=None)`.
It is an `httpx2.Auth` (the SDK uses the `httpx2` fork, not httpx): pass it as
`create_mcp_http_client(auth=provider)` / `httpx2.AsyncClient(auth=provider)` to
`streamable_http_client(url, http_client=…)` and give that transport to `mcp.Client`.
`TokenStorage` is a Protocol: async get_tokens/set_tokens(OAuthToken), get_client_info/
set_client_info(OAuthClientInformationFull). Other providers in mcp.client.auth.extensions:
ClientCredentialsOAuthProvider, PrivateKeyJWTOAuthProvider (client_credentials) and
IdentityAssertionOAuthProvider (SEP-990 ID-JAG jwt-bearer; AS issuer configured, no discovery).

Flow, triggered by a 401 (or a 403 with WWW-Authenticate error="insufficient_scope", step-up):
1. Protected resource metadata (RFC 9728), first 200 wins: the WWW-Authenticate
   `resource_metadata=` URL, then `<origin>/.well-known/oauth-protected-resource<path>` (if the
   MCP URL has a path), then `<origin>/.well-known/oauth-protected-resource`. PRM `resource` must
   be the MCP URL or a path-prefix of it (same origin), else OAuthFlowError. AS =
   `authorization_servers[0]`. No PRM at all: legacy 2025-03-26 mode, the AS is the MCP origin.
2. AS metadata: issuer without path -> `/.well-known/oauth-authorization-server`, then
   `/.well-known/openid-configuration`; issuer with path P -> `/.well-known/oauth-authorization-server/P`,
   `/.well-known/openid-configuration/P`, `P/.well-known/openid-configuration`. 3xx/4xx -> next,
   5xx -> stop. `issuer` must equal the PRM entry by exact string (so no trailing-slash drift).
   Without metadata it falls back to `<MCP origin>/authorize`, `/token`, `/register`.
3. Scope = WWW-Authenticate `scope=` if present, else PRM scopes_supported, else AS
   scopes_supported (joined); then ` offline_access` is appended when the AS lists
   offline_access and the client's grant_types include refresh_token (default). Requesting
   offline_access also adds `prompt=consent` to the authorization request.
4. Client identity: CIMD only if `client_metadata_url` (https, non-root path) was given AND the AS
   metadata says `client_id_metadata_document_supported: true` (client_id = that URL, auth
   method none, no registration). Otherwise DCR: POST JSON OAuthClientMetadata (redirect_uris,
   grant_types [authorization_code, refresh_token], response_types [code], scope = the selected
   scope, application_type "native" by default, client_name, token_endpoint_auth_method only if
   set) to `registration_endpoint`; 200/201 accepted; the answer must carry a usable
   token_endpoint_auth_method (none/client_secret_basic/client_secret_post; a secret method needs a
   client_secret). The registration is stored, bound to the issuer (SEP-2352), and reused.
5. Authorization request: response_type=code, client_id, redirect_uri = redirect_uris[0], state
   (random), code_challenge (S256, 128-char verifier), scope, and `resource` (RFC 8707) when PRM was
   found or the 401'd request carried MCP-Protocol-Version >= 2025-06-18. resource = the canonical
   MCP URL (lower-cased scheme/host, no fragment), or PRM `resource` when that is a path-parent.
   The callback must return the same `state`; `iss` (RFC 9207) must equal the AS issuer exactly if
   present, and MUST be present if the AS advertises authorization_response_iss_parameter_supported.
6. Token request: form POST grant_type=authorization_code, code, redirect_uri, client_id,
   code_verifier, resource; client_secret_basic (URL-encoded id/secret) or client_secret_post per
   the registration. 200/201 with token_type Bearer. Then the 401'd request is retried.
Refresh: proactive only, before a request when expires_in has passed (no early margin): POST
grant_type=refresh_token, refresh_token, client_id, resource (+ client auth). Non-200 -> tokens
dropped, the request goes out unauthenticated and a 401 restarts the full flow. A missing
refresh_token/scope in the answer is carried over from the old token. A 401 with a valid-looking
token does NOT try refresh: it re-runs discovery and the browser flow.
Auth-flow requests follow redirects only within the same origin. A bad `state`/`iss`, a
missing code or a failed token/registration call raises OAuthFlowError (subclasses
OAuthTokenError, OAuthRegistrationError) inside the transport; the SDK surfaces it wrapped in an
ExceptionGroup, which connect_with_oauth unwraps (so `pytest.raises(OAuthFlowError)` works).
A token `expires_in` is tracked in memory only: a new provider on stored tokens treats them as
valid until a 401, and a 401 never tries the refresh token (full browser flow instead).
"""

from __future__ import annotations

import inspect
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client, ClientSession
from mcp.client.auth import OAuthClientProvider, OAuthFlowError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


@dataclass
class MemoryTokenStorage:
    """TokenStorage kept in memory; pass one to several connect_with_oauth calls to reuse the
    registration and tokens (e.g. to test refresh or token reuse across connections)."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None
    token_history: list[OAuthToken] = field(default_factory=list)

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class OAuthConnection:
    client: Client                   # entered mcp.Client: list_tools, call_tool, ...
    provider: OAuthClientProvider
    storage: MemoryTokenStorage
    redirect_uri: str
    auth_urls: list[str]             # every authorization URL handed to drive_login
    final_urls: list[str]            # what drive_login returned for each

    @property
    def session(self) -> ClientSession:
        return self.client.session

    @property
    def access_token(self) -> str | None:
        return self.storage.tokens.access_token if self.storage.tokens else None


def parse_callback(url: str) -> AuthorizationCodeResult:
    """code/state/iss from the redirect URL; an OAuth error response raises OAuthFlowError."""
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    if "error" in q:
        raise OAuthFlowError(f"authorization failed: {q.get('error')}: {q.get('error_description', '')} ({url})")
    if "code" not in q:
        raise OAuthFlowError(f"no code in redirect {url}")
    return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))


@asynccontextmanager
async def connect_with_oauth(
    server_url: str,
    drive_login: Callable[[str], str] | Callable[[str], Awaitable[str]],
    client_metadata_overrides: dict[str, Any] | None = None,
    *,
    redirect_uri: str | None = None,
    storage: MemoryTokenStorage | None = None,
    client_metadata_url: str | None = None,
    mode: str = "auto",
    headers: dict[str, str] | None = None,
    **client_kwargs: Any,
) -> AsyncIterator[OAuthConnection]:
    """An entered mcp.Client on `server_url` (Streamable HTTP) that authenticates with OAuth.

    client_metadata_overrides  fields of OAuthClientMetadata (client_name, scope, grant_types,
                               token_endpoint_auth_method, application_type, redirect_uris, ...)
    redirect_uri               default http://127.0.0.1:<free port>/callback (nobody listens)
    storage                    reuse registration/tokens across connections
    client_metadata_url        https URL used as client_id when the AS supports CIMD
    mode                       mcp.Client mode: "auto" (server/discover probe), "legacy", or a version
    client_kwargs              passed to mcp.Client (elicitation_callback, read_timeout_seconds, ...)
    """
    if redirect_uri is None:
        redirect_uri = f"http://127.0.0.1:{_free_port()}/callback"
    meta: dict[str, Any] = {"client_name": "portcullis-e2e", "redirect_uris": [redirect_uri]}
    meta.update(client_metadata_overrides or {})
    storage = storage if storage is not None else MemoryTokenStorage()
    auth_urls: list[str] = []
    final_urls: list[str] = []
    pending: list[str] = []

    async def redirect_handler(url: str) -> None:
        auth_urls.append(url)
        if inspect.iscoroutinefunction(drive_login):
            final = await drive_login(url)
        else:
            final = await anyio.to_thread.run_sync(drive_login, url)
            if inspect.isawaitable(final):
                final = await final
        final_urls.append(final)
        pending.append(final)

    async def callback_handler() -> AuthorizationCodeResult:
        if not pending:
            raise OAuthFlowError("drive_login returned no redirect")
        return parse_callback(pending.pop())

    provider = OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata.model_validate(meta),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=client_metadata_url,
    )
    try:
        async with create_mcp_http_client(headers=headers, auth=provider) as http:
            transport = streamable_http_client(server_url, http_client=http)
            async with Client(transport, mode=mode, **client_kwargs) as client:
                yield OAuthConnection(client, provider, storage, meta["redirect_uris"][0], auth_urls, final_urls)
    except BaseExceptionGroup as group:
        # The SDK's task groups wrap an OAuth failure; hand tests the OAuthFlowError itself.
        oauth = [e for e in _leaves(group) if isinstance(e, OAuthFlowError)]
        if len(oauth) == 1:
            raise oauth[0] from group
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
