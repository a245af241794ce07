"""Shared setup for end-to-end tests against the real gateway binary."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import importlib.util  # noqa: E402

from gateway import BINARY  # noqa: E402

# The fixture tests' helpers (running_fixture) under a name that does not clash.
_spec = importlib.util.spec_from_file_location("fixture_helpers", ROOT / "tests" / "fixture" / "conftest.py")
assert _spec and _spec.loader
fixture_helpers = importlib.util.module_from_spec(_spec)
sys.modules["fixture_helpers"] = fixture_helpers
_spec.loader.exec_module(fixture_helpers)

PYTHON = os.environ.get("PORTCULLIS_PYTHON") or sys.executable
TOOLS = Path(os.environ.get("PORTCULLIS_TOOLS", ROOT / ".tools"))
NODE_MODULES = TOOLS / "node" / "node_modules"
EVERYTHING_JS = os.environ.get("EVERYTHING_JS", str(NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"))
FILESYSTEM_JS = os.environ.get("FILESYSTEM_JS", str(NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"))
FIXTURE = ROOT / "fixtures" / "conformance_server" / "server.py"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not BINARY.exists():
        raise pytest.UsageError(f"{BINARY} is missing: run `cargo build --release` first")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
