"""A stand-in for the sandbox-token routes of the API, for the smoke test only.

Listens on 127.0.0.1 inside the sandbox container, records every request as a JSON line,
and answers by sandbox id: "flaky" fails twice with 503, "throttled" once with 429,
"rejected" answers 409, "down" always 500; anything else succeeds. A wrong X-API-Key is 401.
Usage: python3 api-stub.py PORT EXPECTED_TOKEN LOG_FILE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, token, log_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({
                "path": self.path,
                "key": self.headers.get("X-API-Key"),
                "contentType": self.headers.get("Content-Type"),
                "body": body,
            }) + "\n")
        parts = self.path.strip("/").split("/")
        sandbox_id = parts[1] if len(parts) == 3 and parts[0] == "sandboxes" else ""
        count = seen[self.path] = seen.get(self.path, 0) + 1
        if self.headers.get("X-API-Key") != token:
            return self.answer(401, {"error": {"code": "unauthorized", "message": "bad sandbox token"}})
        if sandbox_id == "flaky" and count <= 2:
            return self.answer(503, {"error": {"code": "unavailable", "message": "try again"}})
        if sandbox_id == "throttled" and count <= 1:
            return self.answer(429, {"error": {"code": "throttled", "message": "slow down"}}, {"Retry-After": "0"})
        if sandbox_id == "rejected":
            return self.answer(409, {"error": {"code": "conflict", "message": "sandbox is already completed"}})
        if sandbox_id == "down":
            return self.answer(500, {"error": {"code": "internal", "message": "boom"}})
        return self.answer(200, {"sandboxId": sandbox_id, "action": parts[-1]})

    def answer(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # the JSON-lines log above is the record


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
