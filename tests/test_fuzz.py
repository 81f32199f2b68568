"""Schemathesis over every route of /api/openapi.json, against the live stack.

Each case is checked for: no 5xx (but Ollama's own 500 for a non-streamed pull, push or
create whose progress ends in an error), no traceback text in the body, and no trace in the
database when it was refused (4xx) before being queued. A turn that was queued and then
refused by the upstream (a 4xx carrying X-Session-ID) keeps its rows, marked failed by design.

Every case is recorded and the test goes on, so one run lists every problem it found;
test_fuzz_found_nothing then fails with each case (route, body, status, answer) in full.

The fuzzing has a stack of its own (engine, worker, Redis database, SQLite file), so that
whatever it breaks cannot reach the rest of the suite; a dead engine is reported and started
again. The engine caps replies at 4 tokens (ENGINE_MAX_PREDICT) and runs one thread;
model-management mutations (pull, push, create, copy, delete) name a model no host has, so
nothing is created or deleted; /api/events (endless) is read for 1 s.
FUZZ_SEED=<n> fuzzes with other cases than the suite's fixed ones.
"""
import collections
import copy
import json
import os
import re
import time
import uuid

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NOT_SET, NotSet

from chatbot.ops import procs
from chatbot.api.openapi import DOCUMENT
from tests.conftest import MODEL, Stack, migrated_app, serve

MAX_EXAMPLES = 50  # generated per operation, besides the coverage phase's boundary cases
SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
ABSENT = "fuzz-absent-model:none"  # a valid name that no host has
MODEL_MUTATIONS = {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"}
TURNS = {"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/v1/messages"}
TRACEBACK = ("Traceback", 'File "')
EVENTS_SECONDS = 1.0

CASES = []  # (method, path, status) of every case sent
PROBLEMS = {}  # what broke -> every case that broke it


@pytest.fixture(scope="module")
def fuzz_stack(redis_url, tmp_path_factory, logs):
    tmp, port = tmp_path_factory.mktemp("fuzz"), procs.free_port()
    engines = []

    def start_engine():
        """The fuzzing's engine; again on the same port after a crash, as `chatbot up` does."""
        engines.append(procs.start_engine(
            port, log=logs / "fuzz-engine.log",
            # One thread: on a busy machine ggml's threads spin-wait for each other, and a
            # 4-token reply can take 20 s instead of 0.3 s.
            env={"XDG_CACHE_HOME": str(tmp / "cache"), "ENGINE_MAX_PREDICT": "4",
                 "ENGINE_MAX_THREADS": "1"})[0])
        return f"http://127.0.0.1:{port}"

    app, env = migrated_app(redis_url.rsplit("/", 1)[0] + "/6", start_engine(),
                            f"sqlite:///{tmp / 'fuzz.db'}")
    app.extensions["celery"].control.purge()
    worker = procs.start_worker(env, log=logs / "fuzz-worker.log")
    procs.wait_until(lambda: app.extensions["celery"].control.ping(timeout=0.5), 60, worker,
                     "celery worker")
    server, url = serve(app)
    stack = Stack(app, url, env, worker)
    stack.restart_engine = start_engine
    yield stack
    server.shutdown()
    procs.stop(worker)
    for engine in engines:
        procs.stop(engine)


# The document as served (tests/test_openapi.py checks that it is what /api/openapi.json
# answers and that it covers every route). Loaded at import: the stack's URL is given per call
# (schemathesis' lazy from_fixture does not run under pytest 9).
CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "suppress-health-check": ["all"],  # a busy machine makes generation "too slow"
    "request-timeout": 120,
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "no-shrink": True},
    "phases": {"stateful": {"enabled": False}},
    "operations": [{"include-path": "/api/events", "generation": {"max-examples": 5}}],
})
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


# Cases that broke something once, replayed first on every run (the generator may not find
# them again: its cases change with the document). Key: (method, path) -> [(query, body)].
REPLAY = {
    ("POST", "/api/chat"): [
        # killed the engine (llama.cpp: "Unexpected empty grammar stack", std::terminate)
        (None, {"model": MODEL, "stream": False, "format": "json", "options": {"typical_p": -1},
                "messages": [{"role": "user", "content": "hi"}]}),
        # 500: the worker's token count meets a list
        (None, {"model": MODEL, "stream": False,
                "messages": [{"role": "user", "content": "hi", "thinking": ["x"]}]}),
    ],
    ("POST", "/v1/chat/completions"): [
        (None, {"model": MODEL, "messages": [], "response_format": "json"}),
        (None, {"model": MODEL, "messages": [{"role": "user", "content": ["hi"]}]}),
        (None, {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [{}]}]}),
        (None, {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "not json"}}]}]}),
    ],
    ("POST", "/api/sessions/import"): [
        (None, {"threads": {MODEL: [{"role": "user", "content": "hi", "request_id": ["r"]}]}}),
    ],
    ("GET", "/api/sessions"): [({"page": str(2 ** 63)}, None)],
}


@schema.hook
def before_add_examples(context, examples):
    op = context.operation
    for query, body in REPLAY.get((op.method.upper(), op.path), []):
        examples.append(op.Case(query=query, body=body if body is not None else NOT_SET,
                                media_type="application/json" if body is not None else None))


def tame(case):
    """Names that no host has for model mutations; a fresh session for each turn. Only
    strings are replaced by strings: an invalid case stays invalid."""
    body, path = case.body, case.operation.path
    if not isinstance(body, dict):
        return
    if path in MODEL_MUTATIONS:
        for key in ("model", "name", "source", "from"):
            if isinstance(body.get(key), str):
                body[key] = ABSENT
    if path not in TURNS:
        return
    # The generator repeats its UUIDs, and a thread growing by every case would make each turn
    # slower than the last.
    fresh = str(uuid.uuid4())
    if _is_uuid(body.get("session_id")):
        body["session_id"] = fresh
    for name in list(case.headers or {}):
        if name.lower() == "x-session-id" and _is_uuid(case.headers[name]):
            case.headers[name] = fresh


def models(case):
    """The models to send a case with: a turn naming a model is sent as generated (an empty
    name, or one no host has, nearly always) and again naming the real one, so that every case
    also gets past the model lookup to the queue, the worker and the engine."""
    body = case.body
    if (case.operation.path in TURNS and isinstance(body, dict)
            and isinstance(body.get("model"), str) and body["model"] != MODEL):
        return [body["model"], MODEL]
    return [None]


def _is_uuid(value):
    try:
        uuid.UUID(str(value))
        return isinstance(value, str)
    except ValueError:
        return False


def counts(stack):
    return stack.count("sessions"), stack.count("messages")


def newest_statuses(stack, after_id):
    from chatbot.store import Message, db

    with stack.app.app_context():
        return db.session.execute(
            db.select(Message.status).where(Message.id > after_id)).scalars().all()


def last_message_id(stack):
    from chatbot.store import db

    with stack.app.app_context():
        return db.session.execute(
            db.text("SELECT coalesce(max(id), 0) FROM messages")).scalar_one()


def problem(case, status, text, why):
    """Recorded under a key (what broke, where, the answer without its error id), so that the
    report shows each kind of failure once, with its first case and a count; every case is
    written in full to fuzz-problems.json in the logs folder."""
    body = case.body
    if isinstance(body, NotSet):
        body = None
    elif isinstance(body, bytes):
        body = body.decode("latin-1")
    try:
        body = json.dumps(body)
    except (TypeError, ValueError):
        body = repr(body)
    answer = re.sub(r"error id [0-9a-f]+", "error id ...", text[:200])
    key = f"{why}: {case.method.upper()} {case.operation.path} -> {status} {answer!r}"
    PROBLEMS.setdefault(key, []).append({
        "method": case.method.upper(), "path": case.formatted_path, "query": case.query,
        "headers": dict(case.headers or {}), "body": body, "status": status,
        "answer": text[:2000]})


def shown(record):
    return (f"{record['method']} {record['path']} query={record['query']} "
            f"headers={record['headers']} body={record['body'][:1500]} -> {record['status']} "
            f"{record['answer'][:500]!r}")


@schema.parametrize()
def test_fuzz_every_route(case, fuzz_stack):
    for model in models(case):
        if model:
            case.body["model"] = model
        tame(case)
        check(case, fuzz_stack)


def check(case, stack):
    path = case.operation.path
    before, last_id = counts(stack), last_message_id(stack)
    timeout = EVENTS_SECONDS if path == "/api/events" else 120
    started = time.monotonic()
    try:
        response = case.call(base_url=stack.url, timeout=timeout)
    except requests.RequestException as exc:
        CASES.append((case.method, path, None))
        problem(case, "no answer", repr(exc), "request failed")
        return
    status, text = response.status_code, response.text or ""
    CASES.append((case.method, path, status))
    if status >= 500 and not ollama_progress_error(path, status, text):
        problem(case, status, text, "server error")
    if any(marker in text for marker in TRACEBACK):
        problem(case, status, text, "traceback in the body")
    if 400 <= status < 500:
        if "x-session-id" not in response.headers:  # refused before anything was queued
            after = counts(stack)
            if after != before:
                problem(case, status, text, "rows changed by a refused request")
        elif any(s == "ok" for s in newest_statuses(stack, last_id)):
            problem(case, status, text, "a refused turn left rows marked ok")
    if time.monotonic() - started > 60:
        problem(case, status, text, "took over a minute")
    if path in TURNS and not upstream_alive(stack):
        problem(case, status, text, "the upstream died after this case")
        stack.restart_engine()


def ollama_progress_error(path, status, text):
    """Ollama answers a non-streamed pull, push or create whose progress ends in an error with
    a 500 and that error (waitForStream); chatbot passes it through, as a client expects. Our
    own 500s carry an error id."""
    if path not in ("/api/pull", "/api/push", "/api/create") or status != 500:
        return False
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, str) and "error id" not in error


def upstream_alive(stack):
    try:
        return requests.get(stack.env["OLLAMA_HOST"] + "/api/version", timeout=5).ok
    except requests.RequestException:
        return False


def test_fuzz_found_nothing(fuzz_stack, capsys, logs):
    """Runs after the fuzzing above (same module): every route was fuzzed, nothing broke."""
    stack = fuzz_stack
    if not CASES:
        pytest.skip("run together with test_fuzz_every_route")
    classes = collections.Counter(f"{s // 100}xx" if s else "no answer" for _, _, s in CASES)
    with capsys.disabled():
        print(f"\nfuzz: {len(CASES)} cases over {len({(m, p) for m, p, _ in CASES})} method/path "
              f"pairs (methods a route does not serve included); "
              + ", ".join(f"{k}: {n}" for k, n in sorted(classes.items())))
    described = {(m.upper(), p) for p, item in DOCUMENT["paths"].items() for m in item}
    missed = described - {(m.upper(), p) for m, p, _ in CASES}
    if missed:
        PROBLEMS[f"operations never fuzzed: {sorted(missed)}"] = []
    # The stack still serves a real chat after all that.
    resp = requests.post(stack.url + "/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "options": {"num_predict": 4, "temperature": 0},
        "messages": [{"role": "user", "content": "hi"}]})
    if resp.status_code != 200:
        PROBLEMS[f"a chat after the fuzzing: {resp.status_code} {resp.text[:300]!r}"] = []
    (logs / "fuzz-problems.json").write_text(json.dumps(PROBLEMS, indent=1))  # every case
    report = [f"{key}\n  {len(cases)} case(s), the first: {shown(cases[0])}" if cases else key
              for key, cases in PROBLEMS.items()]
    assert not PROBLEMS, f"{len(PROBLEMS)} kind(s) of problem:\n\n" + "\n\n".join(report)
