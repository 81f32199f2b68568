"""SSE streams (GET /api/events) as a shared resource: one Redis subscription per web process
whatever the number of streams, MAX_STREAMS_PER_KEY per key, STREAM_MAX_SECONDS per stream
(the client comes back with Last-Event-ID and misses nothing)."""
import json
import time
import uuid

import requests

from tests.conftest import serve
from tests.test_keys import A, B, bearer
from tests.test_queue import SHORT, chat_body, wait_for


def redis_clients(stack):
    return stack.app.extensions["redis"].info("clients")["connected_clients"]


def open_stream(url, channel, headers=None, last=None):
    headers = {**(headers or {}), **({"Last-Event-ID": str(last)} if last is not None else {})}
    resp = requests.get(f"{url}/api/events?channel={channel}", stream=True, timeout=30,
                        headers=headers)
    return resp


def test_a_hundred_streams_of_one_process_share_one_redis_subscription(stack):
    app = stack.app_with({"MAX_STREAMS_PER_KEY": 500})
    server, url = serve(app)
    streams = []
    try:
        open_stream(url, f"warm-{uuid.uuid4()}").close()  # the process's hub is up
        before = redis_clients(stack)
        streams = [open_stream(url, f"many-{i}-{uuid.uuid4()}") for i in range(100)]
        assert all(s.status_code == 200 for s in streams)
        assert redis_clients(stack) - before <= 5
        # and each still hears its own channel
        target = streams[57]
        channel = target.url.split("channel=")[1]
        stack.app.extensions["redis"].publish(channel, json.dumps(
            {"data": {"position": 7}, "type": "queued"}))
        lines = target.iter_lines(decode_unicode=True)
        assert any('"position": 7' in line for line in lines if line.startswith("data:"))
    finally:
        for s in streams:
            s.close()
        server.shutdown()


def test_one_key_holds_at_most_max_streams_per_key(stack):
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "MAX_STREAMS_PER_KEY": 2})
    server, url = serve(app)
    try:
        mine = [open_stream(url, f"s-{uuid.uuid4()}", bearer(A)) for _ in range(2)]
        assert [s.status_code for s in mine] == [200, 200]
        refused = open_stream(url, f"s-{uuid.uuid4()}", bearer(A))
        assert refused.status_code == 429 and "MAX_STREAMS_PER_KEY" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) > 0
        theirs = open_stream(url, f"s-{uuid.uuid4()}", bearer(B))
        assert theirs.status_code == 200
        theirs.close()
        mine[0].close()  # a stream that ends gives its place back
        wait_for(lambda: open_stream(url, f"s-{uuid.uuid4()}", bearer(A)).status_code == 200,
                 what="a place for a new stream")
        mine[1].close()
    finally:
        server.shutdown()


def test_a_stream_ends_after_stream_max_seconds_and_the_client_misses_nothing(stack):
    app = stack.app_with({"STREAM_MAX_SECONDS": 1})
    server, url = serve(app)
    try:
        resp = requests.post(url + "/api/chat", json={**chat_body(SHORT | {"num_predict": 6}),
                                                      "resumable": True}, timeout=60)
        rid = resp.headers["X-Request-ID"]
        chunks = [json.loads(x) for x in resp.text.splitlines()][:-1]
        began = time.monotonic()
        first = open_stream(url, rid, last=1)
        text = first.text  # read to its end: the server closes it
        assert time.monotonic() - began < 10 and "retry:" in text
        assert "STREAM_MAX_SECONDS" in text
        ids = [int(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("id:")]
        assert ids == list(range(2, len(chunks) + 1))
    finally:
        server.shutdown()
