"""What a client measures end to end: the same chat sent straight to an instant fake Ollama, through
chatbot, and through a LiteLLM proxy, in one run, requests interleaved so that drift hits all
alike. Then chatbot's time per layer, from the Server-Timing header it puts on each
non-streamed reply (timestamps taken along the way, not estimates).

    .venv/bin/python bench/sidebyside.py [--runs 300] [--seconds 5] [--clients 8] [--gap 0.2]
        [--litellm PATH]

Starts the fake (bench/fake_ollama.py), `chatbot up` in front of it (bundled Redis, SQLite in a
temporary folder) and, when the `bench` extra is installed (pip install -e '.[bench]'), a
LiteLLM proxy with one worker; stops them all at the end. --chatbot URL measures a chatbot that
is already running in front of --fake URL instead.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

from chatbot.ops import procs

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "fake:latest"
LITELLM_KEY = "sk-bench-" + "0123456789abcdef" * 3  # LiteLLM refuses to start without one
LAYERS = ("admit", "hop", "start", "context", "store_request", "upstream",
          "store_reply", "finish", "relay", "respond")
ABOUT = {"admit": "parse, validate and admit (the task pushed with it)",
         "hop": "the broker hop (a waiting worker's claim in it)",
         "start": "task start (claim, heartbeat, thread lock)", "context": "session and context",
         "store_request": "storing the request", "upstream": "the upstream call",
         "store_reply": "storing the reply", "finish": "ending it in the line",
         "relay": "the relay back to the web", "respond": "writing the response",
         "total": "all of it, at the web"}


class Door:
    """A front door: where to send a chat and in which dialect (Ollama's or OpenAI's)."""

    def __init__(self, name, url, dialect):
        self.name, self.dialect = name, dialect
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.local = threading.local()

    def request(self, stream):
        path = "/api/chat" if self.dialect == "ollama" else "/chat/completions"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
        return path, json.dumps(body).encode()

    def connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return conn

    def call(self, stream):
        """(seconds to the first byte of the body, seconds to its end, the response headers)."""
        path, body = self.request(stream)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"}
        for attempt in (0, 1):  # a kept-alive connection the server closed is opened again
            conn = self.connection()
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                first = resp.read(1)
                ttfb = time.perf_counter() - start
                rest = resp.read()
                total = time.perf_counter() - start
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"{self.name}: {resp.status} {(first + rest)[:300]!r}")
        return ttfb, total, resp.headers


def server_timing(header):
    """{layer: seconds} from a Server-Timing header."""
    out = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                out[name] = float(value) / 1000
    return out


def interleaved(doors, runs, gap=0.0):
    """Per door: non-streamed totals, streamed times to first byte; chatbot's layers. `gap`:
    seconds of quiet before each request (a worker idle by then, waiting on Celery)."""
    figures = {d.name: {"total": [], "ttfb": []} for d in doors}
    layers = []
    for run in range(runs):
        # Each door goes first, second, ... in turn: none always follows the same other
        # (LiteLLM goes on working for some milliseconds after it has answered).
        shift = run % len(doors)
        for door in doors[shift:] + doors[:shift]:
            time.sleep(gap)
            _, total, headers = door.call(False)
            figures[door.name]["total"].append(total)
            if door.name == "chatbot":
                layers.append(server_timing(headers.get("Server-Timing")))
            time.sleep(gap)
            ttfb, _, _ = door.call(True)
            figures[door.name]["ttfb"].append(ttfb)
    return figures, layers


def throughput(door, clients, seconds):
    """Non-streamed requests per second with `clients` at once, each waiting for its answer."""
    done, errors, stop = [0] * clients, [], time.perf_counter() + seconds

    def client(i):
        try:
            while time.perf_counter() < stop:
                door.call(False)
                done[i] += 1
        except Exception as exc:  # noqa: BLE001  reported, not hidden
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {door.name}: {len(errors)} client(s) failed: {errors[0]}")
    return sum(done) / (time.perf_counter() - began)


def processes():
    """{pid: (parent pid, command line)} of every process."""
    out = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{stat}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
            except (OSError, ValueError):
                continue
            out[int(stat)] = (ppid, argv)
    return out


def roles(root):
    """chatbot's processes under `chatbot up` (pid `root`) by role: web (gunicorn's master and
    worker), worker (the model queue's Celery worker), redis."""
    table, found = processes(), {"web": [], "worker": [], "redis": []}
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    for pid in children.get(root, []):
        argv = " ".join(table[pid][1])
        if "chatbot.ops.launcher web" in argv:
            found["web"] += [pid] + children.get(pid, [])
        elif "celery" in argv and "-Q ollama" in argv:
            found["worker"].append(pid)
        elif "redis-server" in argv:
            found["redis"].append(pid)
    return found


def cpu_seconds(pids):
    """User plus system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def p95(values):
    return statistics.quantiles(values, n=20)[-1]


def report(doors, figures, rates, clients):
    base = figures["direct"]
    base_total, base_ttfb = statistics.median(base["total"]), statistics.median(base["ttfb"])
    print(f"\n| front door | added non-stream median | added time to first byte | "
          f"p95 non-stream | req/s, {clients} concurrent |")
    print("|---|---|---|---|---|")
    for door in doors:
        f = figures[door.name]
        added = statistics.median(f["total"]) - base_total
        added_first = statistics.median(f["ttfb"]) - base_ttfb
        print(f"| {door.name} | {ms(added)} | {ms(added_first)} | {ms(p95(f['total']))} | "
              f"{rates[door.name]:.0f} |")
    chatbot = figures.get("chatbot")
    if chatbot:
        added = [t - base_total for t in chatbot["total"]]
        print(f"\nchatbot added, non-stream: median {ms(statistics.median(added))}, "
              f"p95 {ms(p95(added))} (each request's time less the direct median)")


def report_layers(layers):
    rows = [r for r in layers if r]
    if not rows:
        print("\n(no Server-Timing header from chatbot: no per-layer figures)")
        return
    print(f"\nchatbot per layer, median of {len(rows)} non-streamed requests:\n")
    print("| layer | median | p95 |")
    print("|---|---|---|")
    for layer in (*LAYERS, "total"):
        values = [r[layer] for r in rows if layer in r]
        if values:
            print(f"| {ABOUT[layer]} | {ms(statistics.median(values))} | {ms(p95(values))} |")


def start_fake(logdir):
    """bench/fake_ollama.py on a free port: (its process, its URL)."""
    port = procs.free_port()
    proc = procs.spawn([sys.executable, os.path.join(HERE, "fake_ollama.py"), "--port", str(port)],
                       log=os.path.join(logdir, "fake.log"))
    url = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: procs.http_ok(url + "/api/version"), 30, proc, "fake")
    return proc, url


def start_litellm(fake, logdir, binary=None):
    """A LiteLLM proxy (one worker) in front of the fake, or None when it is not installed.
    `binary`: its `litellm` command, else the one beside this interpreter."""
    binary = binary or procs.bin_path("litellm")
    if not os.path.exists(binary):
        print("LiteLLM is not installed (pip install -e '.[bench]'): its row is left out")
        return None, None
    port = procs.free_port()
    config = os.path.join(logdir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n"
                f"      model: ollama_chat/{MODEL}\n      api_base: {fake}\n"
                "litellm_settings:\n  telemetry: false\n")
    proc = procs.spawn([binary, "--config", config, "--port", str(port), "--num_workers", "1"],
                       env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                            "LITELLM_MASTER_KEY": LITELLM_KEY},
                       log=os.path.join(logdir, "litellm.log"))
    url = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: procs.http_ok(url + "/health/liveliness"), 120, proc, "litellm")
    return proc, url


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--chatbot", help="a running chatbot's URL (in front of --fake)")
    parser.add_argument("--fake", help="a running fake's URL")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--litellm", help="the `litellm` command to run (one installed in a "
                        "virtualenv of its own), else the one beside this interpreter")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between requests (0.2: each one finds the worker idle)")
    args = parser.parse_args()
    logdir = tempfile.mkdtemp(prefix="chatbot-sidebyside-")
    children = []
    try:
        fake = args.fake
        if not fake:
            proc, fake = start_fake(logdir)
            children.append(proc)
        doors = [Door("direct", fake, "ollama")]
        if not args.no_litellm:
            proc, url = start_litellm(fake, logdir, args.litellm)
            if proc:
                children.append(proc)
                doors.append(Door("LiteLLM proxy", url, "openai"))
        chatbot = args.chatbot
        if not chatbot:
            port = procs.free_port()
            env = {"OLLAMA_HOST": fake, "REDIS_URL": "",
                   "DATABASE_URL": f"sqlite:///{os.path.join(logdir, 'chatbot.db')}"}
            children.append(procs.spawn([procs.bin_path("chatbot"), "up", "--port", str(port)],
                                        env=env, log=os.path.join(logdir, "chatbot.log")))
            chatbot = f"http://127.0.0.1:{port}"
            procs.wait_until(lambda: procs.http_ok(chatbot + "/"), 180, children[-1], "chatbot up")
        doors.append(Door("chatbot", chatbot, "ollama"))
        interleaved(doors, 20)  # warm every path up before measuring
        figures, layers = interleaved(doors, args.runs, args.gap)
        rates, cpu = {}, {}
        for door in doors:
            parts = roles(children[-1].pid) if door.name == "chatbot" and not args.chatbot else {}
            before = {role: cpu_seconds(pids) for role, pids in parts.items()}
            began = time.perf_counter()
            rates[door.name] = throughput(door, args.clients, args.seconds)
            served = rates[door.name] * (time.perf_counter() - began)
            if parts:
                cpu = {role: (cpu_seconds(pids) - before[role]) / served
                       for role, pids in parts.items()}
        report(doors, figures, rates, args.clients)
        if cpu:
            print("\nchatbot's CPU per request during the throughput run (less sensitive to a busy "
                  "machine than wall time): " + ", ".join(f"{role} {ms(s)}" for role, s in cpu.items()))
        report_layers(layers)
        print(f"\n({args.runs} interleaved requests per door and kind; throughput over "
              f"{args.seconds:g} s each; logs in {logdir})")
    finally:
        for proc in reversed(children):
            procs.stop(proc)


if __name__ == "__main__":
    sys.exit(main())
