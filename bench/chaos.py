"""Chaos: sessions chat without pause while the parts of `chatbot up` are SIGKILLed in turn
(the web server's gevent worker, the Celery worker, the engine, the web server, Redis); then count what a
client would mind: replies not stored, stored twice, clients left hanging, processes left over.

    .venv/bin/python bench/chaos.py [--sessions 6] [--rounds 2] [--interval 4] [--num-predict 24]
        [--bound 60] [--after-turns 3] [--faults webworker,worker,engine,web,redis]
        [--ollama-host URL] [--database-url URL] [--engine-threads N]

Starts `chatbot up` itself on free ports (bundled Redis; the bundled engine unless
--ollama-host names a running one, which is then never killed) and stops it at the end.
Each request ends as a reply (200 and a final done line or body), an error (an error status,
an {"error"} line, a refused or dropped connection: expected while the web restarts) or hung
(nothing within --bound seconds). Exit status 0 when nothing replied was lost, nothing was
stored twice or half, no client hung and no process outlived `chatbot up`; else 1. Every
request is kept in records.json beside the log. `run(...)` returns the figures
(tests/test_chaos.py runs a short one).

Figures are slow, never wrong, on a loaded machine: llama.cpp threads spin-wait for each
other, so an engine with a thread per core beside another busy one (a parallel test run)
generates tens of times slower; the run names such model servers, and --engine-threads 1
avoids the effect.
"""
import argparse
import collections
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from chatbot.ops import procs

MODEL = "smollm2:135m"
FAULTS = ("webworker", "worker", "engine", "web", "redis")
TOPICS = ("the sea", "volcanoes", "bread", "owls", "the moon", "trains", "chess", "rain",
          "copper", "bees", "glaciers", "tea")
FIGURES = ("requests", "faults", "replies", "errors", "lost", "duplicated", "half_written",
           "hung", "orphans")


# --- processes ------------------------------------------------------------------------------

def _proc(pid):
    """(ppid, state, start time in ticks, argv) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return int(stat[1]), stat[0], int(stat[19]), [a for a in argv if a]


def tree(root):
    """{pid: (ppid, start, argv)} of every live process below root."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _proc(int(entry.name))
            if info and info[1] != "Z":
                table[int(entry.name)] = info
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, start, argv) in table.items():
            if ppid == parent:
                found[pid] = (ppid, start, argv)
                todo.append(pid)
    return found


def alive(pid, start):
    info = _proc(pid)
    return info is not None and info[1] != "Z" and info[2] == start


def _is_ollama_worker(argv):
    return "worker" in argv and "-Q" in argv and argv[argv.index("-Q") + 1:][:1] == ["ollama"]


def _is_engine(argv):
    return ("engine" in argv and any(a.endswith("/chatbot") for a in argv)
            or any(a.endswith("ollama") for a in argv[:1]) and "serve" in argv)


def find(up_pid, kind):
    """The pids of `kind` in the tree of `chatbot up`, matched by their command lines."""
    procs_ = tree(up_pid)
    direct = {pid: argv for pid, (ppid, _, argv) in procs_.items() if ppid == up_pid}
    workers = [pid for pid, argv in direct.items() if _is_ollama_worker(argv)]
    if kind == "worker":
        return workers
    webs = [pid for pid, argv in direct.items() if "chatbot.ops.launcher" in argv and "web" in argv]
    if kind == "webworker":  # gunicorn's worker, which its master starts again
        return [pid for pid, (ppid, _, _) in procs_.items() if ppid in webs]
    if kind == "web":
        return webs
    if kind == "redis":
        return [pid for pid, argv in direct.items() if argv and "redis-server" in argv[0]]
    if kind == "engine":
        return [pid for pid, argv in direct.items() if _is_engine(argv)]
    raise ValueError(kind)


class Sampler(threading.Thread):
    """Remembers every process ever seen in the tree (pid and start time), so that one left
    behind by a fault mid-run counts as an orphan too; and the model servers outside it (other
    test runs on this machine), which compete for the CPU and slow every turn down."""

    def __init__(self, root):
        super().__init__(daemon=True, name="sampler")
        self.root, self.seen, self.stopped = root, {}, threading.Event()
        self.foreign = set()

    def sample(self):
        ours = tree(self.root)
        for pid, (_, start, argv) in ours.items():
            self.seen[(pid, start)] = " ".join(argv)[:120]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in ours:
                info = _proc(int(entry.name))
                if info and _is_engine(info[3]):
                    self.foreign.add((int(entry.name), info[2]))

    def run(self):
        while not self.stopped.wait(0.3):
            self.sample()


# --- clients --------------------------------------------------------------------------------

def chat(url, sid, content, stream, num_predict, bound):
    """One turn; returns a record with its outcome: reply, error or hung."""
    body = {"model": MODEL, "stream": stream,
            "messages": [{"role": "user", "content": content}],
            "options": {"temperature": 0, "seed": 42, "num_predict": num_predict}}
    rec = {"content": content, "stream": stream, "start": time.monotonic(), "status": None,
           "request_id": None, "reply": None, "detail": ""}
    try:
        with requests.post(url + "/api/chat", json=body, headers={"X-Session-ID": sid},
                           stream=stream, timeout=(bound, bound)) as resp:
            rec["status"], rec["request_id"] = resp.status_code, resp.headers.get("X-Request-ID")
            if resp.status_code != 200:
                rec.update(outcome="error", detail=f"HTTP {resp.status_code}: {resp.text[:200]}")
            elif stream:
                _read_stream(resp, rec, bound)
            else:
                data = resp.json()
                if data.get("done"):
                    rec.update(outcome="reply", reply=data["message"]["content"])
                else:
                    rec.update(outcome="error", detail=f"body without done: {str(data)[:120]}")
    except requests.Timeout as exc:
        rec.update(outcome="hung", detail=f"{type(exc).__name__}")
    except (requests.RequestException, ValueError, KeyError) as exc:
        rec.update(outcome="error", detail=f"{type(exc).__name__}: {str(exc)[:120]}")
    rec["end"] = time.monotonic()
    if rec["end"] - rec["start"] > bound and rec["outcome"] != "hung":
        rec.update(outcome="hung", detail=f"answered after {rec['end'] - rec['start']:.1f} s")
    return rec


def _read_stream(resp, rec, bound):
    parts = []
    for line in resp.iter_lines(chunk_size=None):
        if time.monotonic() - rec["start"] > bound:
            rec.update(outcome="hung", detail="stream still going at the bound")
            return
        if not line:
            continue
        chunk = json.loads(line)
        if "error" in chunk:
            rec.update(outcome="error", detail=f"error line: {chunk['error'][:120]}")
            return
        parts.append((chunk.get("message") or {}).get("content", ""))
        if chunk.get("done"):
            rec.update(outcome="reply", reply="".join(parts))
            return
    rec.update(outcome="error", detail="stream ended without done or error")


class Session(threading.Thread):
    def __init__(self, index, url, num_predict, bound, stop):
        super().__init__(daemon=True, name=f"session-{index}")
        self.index, self.url, self.num_predict, self.bound = index, url, num_predict, bound
        self.sid, self.stop, self.records = str(uuid.uuid4()), stop, []

    def run(self):
        turn = 0
        while not self.stop.is_set():
            content = (f"s{self.index} turn {turn}: tell me about "
                       f"{TOPICS[(self.index + turn) % len(TOPICS)]} ({uuid.uuid4().hex[:6]})")
            rec = chat(self.url, self.sid, content, (self.index + turn) % 2 == 0,
                       self.num_predict, self.bound)
            rec.update(session=self.sid, turn=turn)
            self.records.append(rec)
            turn += 1
            if rec["outcome"] != "reply":
                self.stop.wait(0.5)  # the stack is mending: do not spin on refused connections


# --- faults ---------------------------------------------------------------------------------

def ready(url):
    try:
        return requests.get(url + "/readyz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def inject(up_pid, kind, web, engine, timeout=90):
    """SIGKILL one `kind`, then wait until a new one runs and the stack is ready again.
    Returns (pid killed, seconds until back, or None if it never came back)."""
    deadline = time.monotonic() + 10
    while len(targets := find(up_pid, kind)) != 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one {kind} process under chatbot up, found {targets}")
        time.sleep(0.1)
    victim = targets[0]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    back = {
        "webworker": lambda: [p for p in find(up_pid, "webworker") if p != victim],
        "worker": lambda: [p for p in find(up_pid, "worker") if p != victim],
        "engine": lambda: [p for p in find(up_pid, "engine") if p != victim]
                          and procs.http_ok(engine + "/api/version"),
        "web": lambda: [p for p in find(up_pid, "web") if p != victim]
                       and find(up_pid, "webworker"),
        "redis": lambda: [p for p in find(up_pid, "redis") if p != victim],
    }[kind]
    while time.monotonic() - killed < timeout:
        if back() and ready(web):
            return victim, killed, time.monotonic() - killed
        time.sleep(0.2)
    return victim, killed, None


# --- checks ---------------------------------------------------------------------------------

def stored_rows(database_url, session_ids):
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT session_id, model, role, content, status, request_id, seq "
                            "FROM messages WHERE session_id IN :ids ORDER BY id")
            query = query.bindparams(sa.bindparam("ids", expanding=True))
            return [row._asdict() for row in conn.execute(query, {"ids": list(session_ids)})]
    finally:
        engine.dispose()


def check_store(records, rows):
    """lost: replied, yet the user message is not stored exactly once or the reply is missing;
    duplicated: a user message stored twice or a request with two replies; half_written: a
    reply without its request's user row, or two rows at one thread position."""
    users = collections.Counter((r["session_id"], r["content"]) for r in rows
                                if r["role"] == "user")
    user_requests = {(r["session_id"], r["request_id"]) for r in rows if r["role"] == "user"}
    replies = collections.defaultdict(list)
    for r in rows:
        if r["role"] == "assistant":
            replies[r["request_id"]].append(r)
    problems = collections.defaultdict(list)
    for rec in records:
        if rec["outcome"] != "reply":
            continue
        ok = [r for r in replies.get(rec["request_id"], []) if r["status"] == "ok"]
        stored = users[(rec["session"], rec["content"])]
        if stored != 1 or not ok:
            problems["lost"].append(f"{rec['request_id']} {rec['content']!r}: user rows "
                                    f"{stored}, ok replies {len(ok)}")
        elif ok[0]["content"] != rec["reply"]:
            problems["mismatched"].append(f"{rec['request_id']}: stored {ok[0]['content']!r} "
                                          f"vs received {rec['reply']!r}")
    for (sid, content), n in users.items():
        if n > 1:
            problems["duplicated"].append(f"user message {content!r} stored {n} times")
    for rid, found in replies.items():
        if len(found) > 1:
            problems["duplicated"].append(f"request {rid} has {len(found)} replies")
        if any((r["session_id"], rid) not in user_requests for r in found):
            problems["half_written"].append(f"reply of {rid} has no user row in its session")
    seqs = collections.Counter((r["session_id"], r["model"], r["seq"]) for r in rows
                               if r["seq"] is not None)
    for key, n in seqs.items():
        if n > 1:
            problems["half_written"].append(f"{n} rows at thread position {key}")
    return problems


# --- the run --------------------------------------------------------------------------------

def run(sessions=6, rounds=2, interval=4.0, num_predict=24, bound=60.0, after_turns=3,
        ollama_host=None, database_url=None, faults=None, engine_threads=None, out=print):
    """Start `chatbot up`, chat and break things, stop it, check. Returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="chatbot-chaos-"))
    log = tmp / "up.log"
    out(f"log: {log}")
    web_port, engine_port = procs.free_port(), procs.free_port()
    own_engine = not ollama_host
    database_url = database_url or f"sqlite:///{tmp / 'chaos.db'}"
    env = {"REDIS_URL": "", "DATABASE_URL": database_url, "OLLAMA_HOSTS": "",
           "OLLAMA_HOST": ollama_host or f"http://127.0.0.1:{procs.free_port()}"}
    if engine_threads:
        env["CHATBOT_ENGINE_THREADS"] = str(engine_threads)
    kinds = [k for k in (faults or FAULTS) if own_engine or k != "engine"] * rounds
    web, engine = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{engine_port}"
    up_started = time.monotonic()
    up = procs.spawn([procs.bin_path("chatbot"), "up", "--port", web_port,
                      "--engine-port", engine_port], env=env, log=log)
    sampler, stop, clients, injected = Sampler(up.pid), threading.Event(), [], []
    try:
        procs.wait_until(lambda: ready(web) and find(up.pid, "webworker"), 180, up, "chatbot up")
        sampler.start()
        # Load the model once: the first turn of a fresh engine is not what is measured.
        chat(web, str(uuid.uuid4()), "hello", False, num_predict, 120)
        clients = [Session(i, web, num_predict, bound, stop) for i in range(sessions)]
        for client in clients:
            client.start()
        for kind in kinds:
            time.sleep(interval)
            if up.poll() is not None:
                raise RuntimeError(f"chatbot up exited with {up.returncode}; see {log}")
            victim, at, took = inject(up.pid, kind, web, engine)
            injected.append({"kind": kind, "pid": victim, "at": at, "back": took})
            out(f"  killed {kind:6s} pid {victim:<7d} back after "
                + (f"{took:.1f} s" if took is not None else "NEVER (gave up after 90 s)"))
        done_before = [len(c.records) for c in clients]
        deadline = time.monotonic() + bound * (after_turns + 1)
        while time.monotonic() < deadline and any(
                len(c.records) < n + after_turns for c, n in zip(clients, done_before)):
            time.sleep(0.2)
        tail_replies = sum(r["outcome"] == "reply" for c, n in zip(clients, done_before)
                           for r in c.records[n:])
    finally:
        stop.set()
        for client in clients:
            client.join(bound + 10)
        sampler.stopped.set()
        if up.poll() is None:
            sampler.sample()
            os.kill(up.pid, signal.SIGTERM)
            try:
                up.wait(60)
            except Exception:
                out("chatbot up did not exit within 60 s of SIGTERM; killing it")
        procs.stop(up)
    exit_code = up.returncode
    deadline = time.monotonic() + 5
    left = list(sampler.seen)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [key for key in left if alive(*key)]
    records = [r for c in clients for r in c.records]
    problems = check_store(records, stored_rows(database_url, [c.sid for c in clients]))
    problems["hung"] = [f"{r['content']!r}: {r['detail']}" for r in records
                        if r["outcome"] == "hung"]
    problems["orphans"] = [f"pid {pid}: {sampler.seen[(pid, start)]}" for pid, start in left]
    figures = {
        "requests": len(records), "faults": len(injected),
        "replies": sum(r["outcome"] == "reply" for r in records),
        "errors": sum(r["outcome"] == "error" for r in records),
        **{k: len(problems[k]) for k in ("lost", "duplicated", "half_written", "hung",
                                         "orphans", "mismatched")},
        "tail_replies": tail_replies, "not_back": sum(f["back"] is None for f in injected),
        "up_exit": exit_code, "log": str(log), "other_engines": len(sampler.foreign),
        "processes_seen": len(sampler.seen),
        "loadavg": os.getloadavg()[0],
        "slowest": {kind: round(max((r["end"] - r["start"] for r in records
                                     if r["outcome"] == kind), default=0), 1)
                    for kind in ("reply", "error")},
        "errors_after": errors_after(records, injected), "problems": dict(problems),
        "seconds": round(max((r["end"] for r in records), default=0)
                         - min((r["start"] for r in records), default=0), 1),
    }
    _dump(tmp / "records.json", records, injected, up_started)
    out(f"records: {tmp / 'records.json'}")
    report(figures, records, out)
    return figures


def _dump(path, records, injected, t0):
    """Every request and fault, times in seconds from the start, for reading after a run."""
    rel = lambda t: round(t - t0, 3)  # noqa: E731
    path.write_text(json.dumps({
        "faults": [{**f, "at": rel(f["at"])} for f in injected],
        "requests": sorted(({**r, "start": rel(r["start"]), "end": rel(r["end"])}
                            for r in records), key=lambda r: r["start"])}, indent=1))


def errors_after(records, injected):
    """Errors per fault kind: each is put down to the last fault before it ended, except a
    worker's death, which the line notices only once the heartbeat has lapsed (after the
    next fault, maybe): that goes to the last kill of a worker before then."""
    from chatbot.line.heartbeat import HEARTBEAT_TTL

    counts = collections.Counter({f["kind"]: 0 for f in injected})
    for rec in records:
        if rec["outcome"] != "error":
            continue
        kinds, end = FAULTS, rec["end"]
        if "worker running this request died" in rec["detail"]:
            kinds, end = ("worker",), end - HEARTBEAT_TTL + 1
        before = [f for f in injected if f["at"] <= end and f["kind"] in kinds]
        counts[before[-1]["kind"] if before else "(no fault yet)"] += 1
    return dict(counts)


def report(figures, records, out=print):
    out("")
    out("  ".join(f"{name:>12s}" for name in FIGURES))
    out("  ".join(f"{figures[name]:>12d}" for name in FIGURES))
    out(f"\nover {figures['seconds']} s; replies after the last fault: {figures['tail_replies']}; "
        f"faults never recovered from: {figures['not_back']}; replies stored differently from "
        f"what the client read: {figures['mismatched']}; chatbot up exited {figures['up_exit']}; "
        f"processes seen in its tree: {figures['processes_seen']}")
    out(f"slowest reply {figures['slowest']['reply']} s, slowest error "
        f"{figures['slowest']['error']} s; load average {figures['loadavg']:.1f}; "
        f"other model servers running on this machine meanwhile: {figures['other_engines']}")
    out("errors following each fault kind: " + ", ".join(
        f"{kind} {n}" for kind, n in figures["errors_after"].items()))
    details = collections.Counter(_kind(r["detail"]) for r in records if r["outcome"] == "error")
    for detail, n in details.most_common(8):
        out(f"  {n:4d} x {detail[:110]}")
    for name, items in figures["problems"].items():
        for item in items[:10]:
            out(f"{name}: {item}")


def _kind(detail):
    """An error's detail without what varies (ports, error ids), to count alike ones together."""
    if detail.startswith("ConnectionError"):
        return ("connection refused" if "Max retries" in detail
                else "connection dropped before an answer")
    if detail.startswith("ChunkedEncodingError"):
        return "connection dropped mid-answer"
    if detail.startswith("HTTP"):
        status, _, body = detail.partition(": ")
        try:
            body = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        detail = f"{status}: {body}"
    return re.sub(r" \(error id \w+\)", "", detail)


def passed(figures):
    return not any(figures[k] for k in ("lost", "duplicated", "half_written", "hung", "orphans"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the five faults")
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between faults")
    parser.add_argument("--num-predict", type=int, default=24)
    parser.add_argument("--bound", type=float, default=60.0,
                        help="seconds a client waits for a reply or an error")
    parser.add_argument("--after-turns", type=int, default=3,
                        help="turns each session chats after the last fault")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which faults, in order")
    parser.add_argument("--ollama-host", help="a running Ollama or engine (never killed)")
    parser.add_argument("--database-url", help="default: SQLite in a temp folder")
    parser.add_argument("--engine-threads", type=int,
                        help="CHATBOT_ENGINE_THREADS for the bundled engine (default: all cores)")
    args = parser.parse_args()
    figures = run(sessions=args.sessions, rounds=args.rounds, interval=args.interval,
                  num_predict=args.num_predict, bound=args.bound, after_turns=args.after_turns,
                  ollama_host=args.ollama_host, database_url=args.database_url,
                  faults=[f.strip() for f in args.faults.split(",") if f.strip()],
                  engine_threads=args.engine_threads)
    return 0 if passed(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
