"""An instant fake Ollama for benchmarks: it answers at once, so what a front door in front of it
adds is all that a client measures on top of talking to it directly.

    python bench/fake_ollama.py --port 11500 [--delay SECONDS]

One model, `fake:latest`. /api/chat and /api/generate stream one content chunk and the final
chunk (or answer once with stream false), with Ollama's fields; /api/tags, /api/show,
/api/version and / as Ollama answers them. Threaded, HTTP/1.1 keep-alive. `--delay` makes each reply take that long, as a model would
(bench/fairness.py), one at a time, as Ollama runs one generation at a time.
"""
import argparse
import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake:latest"
REPLY = "Hello! How can I help you today?"
TAGS = {"models": [{"name": MODEL, "model": MODEL, "modified_at": "2026-01-01T00:00:00Z",
                    "size": 1, "digest": "0" * 64,
                    "details": {"format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "135M", "quantization_level": "Q8_0"}}]}
SHOW = {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
        "details": TAGS["models"][0]["details"],
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": ["completion"]}


def _now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _chunks(path, model):
    """The streamed lines of one reply: one content chunk, then the final chunk."""
    if path == "/api/chat":
        first = {"model": model, "created_at": _now(),
                 "message": {"role": "assistant", "content": REPLY}, "done": False}
        last = {"model": model, "created_at": _now(),
                "message": {"role": "assistant", "content": ""}}
    else:
        first = {"model": model, "created_at": _now(), "response": REPLY, "done": False}
        last = {"model": model, "created_at": _now(), "response": ""}
    last.update(done=True, done_reason="stop", total_duration=1000, load_duration=10,
                prompt_eval_count=10, prompt_eval_duration=100, eval_count=9, eval_duration=500)
    return first, last


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay, busy = 0.0, threading.Lock()
    disable_nagle_algorithm = True  # small writes go out at once, as Go's server sends them

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self._send(200, b"", "text/plain")

    def do_GET(self):
        if self.path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.path == "/api/version":
            self._send(200, {"version": "0.12.0"})
        elif self.path in ("/api/tags", "/api/ps"):
            self._send(200, TAGS)
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/api/show":
            return self._send(200, SHOW)
        if self.path not in ("/api/chat", "/api/generate"):
            return self._send(404, b"404 page not found", "text/plain")
        model = body.get("model") or MODEL
        if self.delay:
            with self.busy:
                time.sleep(self.delay)
        first, last = _chunks(self.path, model)
        if body.get("stream", True) is False:
            key = "message" if self.path == "/api/chat" else "response"
            return self._send(200, {**last, key: first[key]})
        data = (json.dumps(first) + "\n").encode(), (json.dumps(last) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.write(b"0\r\n\r\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each reply takes")
    args = parser.parse_args()
    Handler.delay = args.delay
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
