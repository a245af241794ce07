"""A minimal Streamable HTTP MCP server (JSON responses) that records request headers.

Usage: header_echo_http.py PORT. Prints `READY <url>`. Tool `headers` returns, as JSON
text, the headers of every request this server has received so far (so a test can
check what a gateway forwarded on initialize, list and call).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        SEEN.append({k.lower(): v for k, v in self.headers.items()})
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0")) or 0) or b"{}")
        if "id" not in body:
            self.send_response(202)
            self.end_headers()
            return
        method = body.get("method")
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "header-echo", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "headers", "description": "Headers seen so far",
                                 "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": json.dumps(SEEN)}]}
        elif method == "ping":
            result = {}
        else:
            out = {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601, "message": "no"}}
            return self._send(out)
        self._send({"jsonrpc": "2.0", "id": body["id"], "result": result})

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("mcp-session-id", "upstream-session-1")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_response(405)
        self.end_headers()

    def do_DELETE(self):
        self.send_response(200)
        self.end_headers()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"READY http://127.0.0.1:{server.server_port}/mcp", flush=True)
    server.serve_forever()
