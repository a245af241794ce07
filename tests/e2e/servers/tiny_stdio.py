"""A tiny hand-written stdio MCP server (newline-delimited JSON-RPC) for e2e tests.

Usage: tiny_stdio.py MARKER [stubborn] [grandchild]. Prints `TINY-STDERR <MARKER> pid=<pid>` on stderr at start
(the gateway logs child stderr), then serves `initialize`, `ping`, `tools/list` and
`tools/call` with tools `echo` (`fail: true` makes it report a tool error), `pid` and `sleep` (each call in its own thread so a
sleeping call never blocks the others). Cancellations are reported on stderr.
`stubborn` ignores SIGTERM and outlives stdin EOF (only SIGKILL stops it); `grandchild`
starts a long-lived grandchild (command line `MARKER-grandchild`) in its process group.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

MARKER = sys.argv[1] if len(sys.argv) > 1 else "none"
MODES = set(sys.argv[2:])
LOCK = threading.Lock()
TOOLS = [
    {"name": "echo", "description": "Echo text", "inputSchema": {
        "type": "object", "properties": {"text": {"type": "string"}}}},
    {"name": "pid", "description": "This process's pid", "inputSchema": {"type": "object"}},
    {"name": "sleep", "description": "Sleep, then answer", "inputSchema": {
        "type": "object", "properties": {"seconds": {"type": "number"}}}},
]


def log(text):
    print(f"TINY-STDERR {MARKER} {text}", file=sys.stderr, flush=True)


def send(msg):
    with LOCK:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def reply(mid, result=None, error=None):
    send({"jsonrpc": "2.0", "id": mid, **({"error": error} if error else {"result": result})})


def call(mid, params):
    name, args = params.get("name"), params.get("arguments") or {}
    if name == "echo":
        text = str(args.get("text", ""))
        if args.get("fail"):
            # A tool-level failure: the call worked, the tool reports an error.
            return reply(mid, {"content": [{"type": "text", "text": f"failed: {text}"}], "isError": True})
    elif name == "pid":
        text = str(os.getpid())
    elif name == "sleep":
        time.sleep(min(float(args.get("seconds", 5)), 30))
        text = "slept"
    else:
        return reply(mid, error={"code": -32602, "message": f"Unknown tool: {name}"})
    reply(mid, {"content": [{"type": "text", "text": text}], "isError": False})


def handle(msg):
    method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "notifications/cancelled":
        log(f"CANCELLED {params.get('requestId')}")
    if method is None or mid is None:
        return  # notifications and responses need no answer
    if method == "initialize":
        reply(mid, {"protocolVersion": params.get("protocolVersion", "2025-11-25"),
                    "capabilities": {"tools": {}}, "serverInfo": {"name": "tiny", "version": "1"}})
    elif method == "ping":
        reply(mid, {})
    elif method == "tools/list":
        reply(mid, {"tools": TOOLS})
    elif method == "tools/call":
        threading.Thread(target=call, args=(mid, params), daemon=True).start()
    else:
        reply(mid, error={"code": -32601, "message": f"Method not found: {method}"})


def main():
    log(f"pid={os.getpid()} started")
    if "stubborn" in MODES:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "grandchild" in MODES:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"{MARKER}-grandchild"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in sys.stdin:
        if line.strip():
            try:
                handle(json.loads(line))
            except (ValueError, AttributeError) as e:
                log(f"bad line: {e}")
    log("stdin closed")
    if "stubborn" in MODES:
        time.sleep(60)


if __name__ == "__main__":
    main()
