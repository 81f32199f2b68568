"""Several machines' worth of chatbot on one, every part its own OS process: two web
processes and two Celery workers serving two upstream hosts (bundled engines), sharing one
Redis and one PostgreSQL database, as on several machines (README: "Several machines").

Sessions hop between the two web processes turn by turn, several at once, and one turn is
sent twice at once through both (a retry: joined to the first, stored once); meanwhile ten
clients share one more session. PostgreSQL then holds every turn once, whole and in order, and
the logs and Redis show that both web processes, both workers and both hosts did the work."""
import contextlib
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatbot.ops import procs
from chatbot.redis_keys import INFO
from chatbot.upstream.routing import queue_name
from tests.conftest import migrated_app
from tests.test_faults import assert_whole_ordered_turns, chat, ten_clients_three_turns
from tests.test_queue import SHORT, Background, chat_body
from chatbot.api.turns import BUSY
import requests

REDIS_DB = 5  # a broker of its own: the suite's shared worker must never take these tasks
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}
SESSIONS, TURNS = 3, 4
TWICE = (0, 2)  # session 0 sends its turn 2 through both web processes at once
CROWD_TURNS = 30  # ten_clients_three_turns: ten clients, three turns each, one session


class Cluster:
    def __init__(self, app, database_url, engines, queues, webs, web_logs, worker_logs):
        self.app, self.database_url, self.engines, self.queues = app, database_url, engines, queues
        self.webs, self.web_logs, self.worker_logs = webs, web_logs, worker_logs


@pytest.fixture
def cluster(postgres_url, redis_url, logs_dir):
    with running_cluster(postgres_url, redis_url, logs_dir) as made:
        yield made


@contextlib.contextmanager
def running_cluster(postgres_url, redis_url, logs_dir, **settings):
    """Two engines, two workers (one per host's queue), two web processes, with `settings` in
    their environment; all stopped after."""
    redis = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    started, app = [], None
    try:
        engines = []
        for n in (1, 2):
            proc, url = procs.start_engine(procs.free_port(), log=logs_dir / f"mp-engine-{n}.log",
                                           env={"CHATBOT_ENGINE_THREADS": "1"})
            started.append(proc)
            engines.append(url)
        app, _ = migrated_app(redis, engines[0], postgres_url)
        app.extensions["redis"].flushdb()  # nothing left from an earlier run
        env = {"REDIS_URL": redis, "DATABASE_URL": postgres_url, "OLLAMA_HOSTS": ",".join(engines),
               "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", **settings}
        queues = {host: queue_name(i, len(engines)) for i, host in enumerate(engines)}
        worker_logs = {q: logs_dir / f"mp-worker-{n}.log" for n, q in enumerate(queues.values(), 1)}
        workers = [procs.start_worker(env, queues=q, log=log) for q, log in worker_logs.items()]
        started += workers
        ports = [procs.free_port() for _ in range(2)]
        web_logs = [logs_dir / f"mp-web-{n}.log" for n in (1, 2)]
        webs = [procs.spawn([sys.executable, "-m", "chatbot.ops.launcher", "web", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, log=log)
                for port, log in zip(ports, web_logs)]
        started += webs
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for n, (web, url) in enumerate(zip(webs, urls), 1):
            procs.wait_until(lambda: procs.http_ok(url + "/"), 30, web, f"web process {n}")

        def both_workers():
            names = {name for reply in app.extensions["celery"].control.ping(timeout=0.5)
                     for name in reply}
            return all(any(name.startswith(q + "@") for name in names) for q in queues.values())

        procs.wait_until(both_workers, 60, workers[0], "the two workers")
        yield Cluster(app, postgres_url, engines, queues, urls, web_logs, worker_logs)
    finally:
        for proc in reversed(started):
            procs.stop(proc)
        if app is not None:
            from chatbot.store import db

            app.extensions["redis"].flushdb()
            with app.app_context():
                db.session.remove()
                db.engine.dispose()


def logged_request_ids(path):
    """The request ids named by the JSON log lines of one process."""
    ids = set()
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line).get("request_id"))
        except (ValueError, AttributeError):
            pass  # Celery's banner and other plain lines
    return ids - {None}


def test_two_webs_two_workers_two_hosts_share_one_redis_and_one_postgresql(cluster):
    line = cluster.app.extensions["line"]
    started = time.monotonic()

    # Ten clients crowd one session through web 1 first, so its host's line is long...
    crowd_sid, crowd_errors = str(uuid.uuid4()), []
    crowd = threading.Thread(target=lambda: crowd_errors.extend(
        ten_clients_three_turns(cluster.webs[0], crowd_sid)))
    crowd.start()
    procs.wait_until(lambda: sum(line.load(q) for q in cluster.queues.values()) >= 5, 30,
                     what="the crowd in line")
    # ...and the sessions that start now find the other host's line shorter (if the crowd's
    # own first turns were spread over both hosts, both serve anyway).
    sent = []  # (web index, session id, content, response)
    lock = threading.Lock()

    def send(web, sid, content):
        resp = chat(cluster.webs[web], sid, content, OPTIONS)
        with lock:
            sent.append((web, sid, content, resp))

    def session(n, sid):
        with ThreadPoolExecutor(2) as pair:
            for turn in range(TURNS):
                content = f"session {n} turn {turn}"
                webs = (0, 1) if (n, turn) == TWICE else ((n + turn) % 2,)  # alternate webs
                for future in [pair.submit(send, web, sid, content) for web in webs]:
                    future.result()

    sids = [str(uuid.uuid4()) for _ in range(SESSIONS)]
    with ThreadPoolExecutor(SESSIONS) as sessions:
        for future in [sessions.submit(session, n, sid) for n, sid in enumerate(sids)]:
            future.result()
    crowd.join(300)
    assert not crowd.is_alive() and crowd_errors == []
    elapsed = time.monotonic() - started

    # Every answer: 200, naming its session, with a request id of its own.
    assert len(sent) == SESSIONS * TURNS + 1
    for web, sid, content, resp in sent:
        assert resp.status_code == 200, (web, content, resp.text)
        assert resp.headers["X-Session-ID"] == sid == resp.json()["session_id"]
    request_ids = [resp.headers["X-Request-ID"] for *_, resp in sent]
    assert len(set(request_ids)) == len(request_ids) - 1  # the retry joined the first
    twice = [resp for _, sid, content, resp in sent
             if (sid, content) == (sids[TWICE[0]], f"session {TWICE[0]} turn {TWICE[1]}")]
    assert len(twice) == 2 and twice[0].json()["message"] == twice[1].json()["message"]

    # PostgreSQL itself: every turn stored once, whole, in order, ok.
    import sqlalchemy

    engine = sqlalchemy.create_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT session_id, seq, role, content, status, request_id FROM messages "
                "ORDER BY session_id, id")).all()
            stored_sessions = set(conn.execute(sqlalchemy.text("SELECT id FROM sessions"))
                                  .scalars())
    finally:
        engine.dispose()
    assert stored_sessions == {crowd_sid, *sids}
    assert len(rows) == 2 * (CROWD_TURNS + SESSIONS * TURNS)
    assert {r.status for r in rows} == {"ok"} and all(r.seq is not None for r in rows)
    per_request = {}
    for r in rows:
        per_request.setdefault(r.request_id, []).append(r.role)
    assert all(roles == ["user", "assistant"] for roles in per_request.values())  # once each
    assert_whole_ordered_turns([r for r in rows if r.session_id == crowd_sid])
    crowd_ids = {r.request_id for r in rows if r.session_id == crowd_sid}
    answers = {resp.headers["X-Request-ID"]: resp.json()["message"]["content"]
               for *_, resp in sent}
    for n, sid in enumerate(sids):
        mine = [r for r in rows if r.session_id == sid]
        assert [r.seq for r in mine] == list(range(1, 2 * TURNS + 1))  # no gap, no fork
        expected = [f"session {n} turn {t}" for t in range(TURNS)]
        assert [r.content for r in mine if r.role == "user"] == expected
        for question, answer in zip(mine[::2], mine[1::2]):  # each turn whole
            assert (question.role, answer.role) == ("user", "assistant")
            assert question.request_id == answer.request_id
            assert answers[answer.request_id] == answer.content  # what its client was told
    assert set(per_request) == set(answers) | crowd_ids

    # Who did the work: each request was queued by the web process it was sent to, and run
    # by the worker of the queue of the host Redis says it went to; both of each took part.
    web_ids = [logged_request_ids(path) for path in cluster.web_logs]
    for web, _, _, resp in sent:
        rid = resp.headers["X-Request-ID"]
        joined = rid == twice[0].headers["X-Request-ID"]  # answered by both
        assert rid in web_ids[web] and (joined or rid not in web_ids[1 - web])
    assert crowd_ids <= web_ids[0]
    worker_ids = {q: logged_request_ids(path) for q, path in cluster.worker_logs.items()}
    redis = cluster.app.extensions["redis"]
    hosts = {}
    for rid in per_request:
        record = {k.decode(): v.decode() for k, v in redis.hgetall(INFO.format(rid)).items()}
        assert record["state"] == "done" and record["queue"] == cluster.queues[record["host"]]
        assert [q for q, ids in worker_ids.items() if rid in ids] == [record["queue"]]
        hosts.setdefault(record["host"], []).append(rid)
    assert set(hosts) == set(cluster.engines), {h: len(ids) for h, ids in hosts.items()}
    assert all(web_ids) and all(worker_ids.values())
    print(f"{len(per_request)} turns in {elapsed:.1f} s; per host:",
          {h: len(ids) for h, ids in hosts.items()})


def test_each_keys_share_holds_across_two_webs_and_two_workers(postgres_url, redis_url, logs_dir):
    """The share rules live in Redis, not in a process: with keys on, a key sending through
    both web processes holds at most MAX_QUEUE_PER_KEY places per host's line (503 past it)
    while another key gets in through either; its event streams (MAX_STREAMS_PER_KEY) and its
    requests on all routes (RATE_LIMIT_PER_KEY) are counted together across both."""
    keys = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789",
            "carol": "key-carol-0123456789"}
    auth = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
    with running_cluster(postgres_url, redis_url, logs_dir,
                         API_KEYS=",".join(f"{n}={k}" for n, k in keys.items()),
                         MAX_QUEUE_PER_KEY="1", MAX_STREAMS_PER_KEY="3",
                         RATE_LIMIT_PER_KEY="10/minute") as cluster:
        webs = cluster.webs
        long = {"temperature": 0, "seed": 42, "num_predict": 300}
        # Bob: six long chats at once, three through each web process.
        bob = [Background(webs[i % 2], chat_body(long, stream=False), headers=auth["bob"],
                          timeout=180) for i in range(6)]
        line = cluster.app.extensions["line"]
        procs.wait_until(lambda: sum(s.response is not None for s in bob) >= 4, 60,
                         what="bob's refusals")
        time.sleep(1)  # one admitted per host's line; both, unless two chose the same at once
        refused = [s for s in bob if s.response is not None]
        for sent in refused:
            sent.join(10)
        assert len(refused) in (4, 5) and all(s.response.status_code == 503 for s in refused)
        assert all(s.lines == [{"error": BUSY}] for s in refused)
        assert sum(line.load(q) for q in cluster.queues.values()) <= 2  # one per host's line
        # Alice gets in through either web process meanwhile.
        for web in webs:
            answer = requests.post(web + "/api/chat", headers=auth["alice"], timeout=180,
                                   json=chat_body(SHORT, stream=False))
            assert answer.status_code == 200, answer.text
        # Carol's streams, two on each web: the fourth is refused, wherever it is opened.
        streams = [requests.get(webs[i % 2] + "/api/events", headers=auth["carol"], stream=True,
                                timeout=30) for i in range(4)]
        try:
            assert [s.status_code for s in streams] == [200, 200, 200, 429]
        finally:
            for s in streams:
                s.close()
        # Carol's requests on every route, through both webs: ten a minute in all.
        codes = [requests.get(webs[i % 2] + path, headers=auth["carol"], timeout=30).status_code
                 for i, path in enumerate(["/api/tags", "/api/ps", "/api/queue"] * 4)]
        assert codes[:6] == [200] * 6 and codes[-2:] == [429, 429], codes
        for sent in bob:
            sent.join(180)
