"""The fair line: a host's requests are taken in turns between askers (the key while keys are
on, else the session), so a client that queues many does not make everyone wait behind all."""
import json
import threading
import uuid

import requests

from tests.conftest import serve
from tests.test_keys import A, B, bearer, keyed  # noqa: F401  (keyed: a fixture)
from tests.test_queue import (BUSY, SHORT, Background, cancel, chat_body, queue_state,
                              start_slow, wait_for)


def waiting_ids(url, headers=None):
    state = requests.get(url + "/api/queue", headers=headers, timeout=5).json()["queues"][0]
    return [w.get("request_id") for w in state["waiting"]]


def queue_up(url, session_id, rid, headers=None):
    # Each its own question: the same one again in a session would join the first (a retry)
    body = {**chat_body(SHORT, session_id, stream=False),
            "messages": [{"role": "user", "content": f"Write about the sea ({rid})."}]}
    sent = Background(url, body, rid, headers=headers)
    wait_for(lambda: rid in waiting_ids(url, headers), what=f"{rid} to wait")
    return sent


def positions(events, until):
    """The positions announced on an SSE stream, until `until` of them have come."""
    seen, kind = [], None
    for line in events.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "queued":
            seen.append(json.loads(line.split(":", 1)[1])["position"])
            if len(seen) == until:
                return seen
    return seen


def test_one_request_waits_behind_one_of_each_other_asker_and_positions_follow(stack):
    slow_id, slow = start_slow(stack)
    many, one = str(uuid.uuid4()), str(uuid.uuid4())
    mine = [f"many-{i}-{uuid.uuid4()}" for i in range(4)]
    events = requests.get(f"{stack.url}/api/events?channel={mine[3]}", stream=True, timeout=60)
    sent = [queue_up(stack.url, many, rid) for rid in mine]
    theirs = f"one-{uuid.uuid4()}"
    sent.append(queue_up(stack.url, one, theirs))
    # Behind the first of the asker with four, ahead of its other three.
    assert waiting_ids(stack.url) == [mine[0], theirs, *mine[1:]]
    state = queue_state(stack.url)
    assert [w["position"] for w in state["waiting"]] == [1, 2, 3, 4, 5]
    # The last of the four heard its place change when the other asker went ahead of it.
    assert positions(events, 2) == [4, 5]
    events.close()
    cancel(stack, slow_id)
    for request in sent:
        request.join(120)
        assert request.response.status_code == 200
    slow.join(30)
    started = {rid: float(requests.get(f"{stack.url}/api/queue/{rid}", timeout=5).json()["started_at"])
               for rid in [*mine, theirs]}
    assert sorted(started, key=started.get) == [mine[0], theirs, *mine[1:]]


def test_first_come_first_served_when_asked(stack):
    fifo = stack.app_with({"QUEUE_ORDER": "fifo"})
    server, url = serve(fifo)
    try:
        slow_id, slow = start_slow(stack)
        many = str(uuid.uuid4())
        mine = [f"fifo-{i}-{uuid.uuid4()}" for i in range(3)]
        sent = [queue_up(url, many, rid) for rid in mine]
        theirs = f"last-{uuid.uuid4()}"
        sent.append(queue_up(url, str(uuid.uuid4()), theirs))
        assert waiting_ids(url) == [*mine, theirs]
        cancel(stack, slow_id)
        for request in sent:
            request.join(120)
        slow.join(30)
    finally:
        server.shutdown()


def test_with_keys_on_the_key_is_the_asker(keyed, stack):
    _, url = keyed
    slow_id, slow = start_slow(stack)
    alice = [f"alice-{i}-{uuid.uuid4()}" for i in range(3)]
    # Each of alice's requests in a session of its own: still one asker, her key.
    sent = [queue_up(url, str(uuid.uuid4()), rid, bearer(A)) for rid in alice]
    bobs = f"bob-{uuid.uuid4()}"
    sent.append(queue_up(url, None, bobs, bearer(B)))
    order = waiting_ids(url, bearer(A))  # bob's entry shows only its place to alice
    assert order[0] == alice[0] and order[1] is None and order[2:] == alice[1:]
    assert waiting_ids(url, bearer(B))[1] == bobs
    cancel(stack, slow_id)
    for request in sent:
        request.join(120)
        assert request.response.status_code == 200
    slow.join(30)


def test_with_keys_on_one_key_holds_at_most_its_share_of_the_line(stack):
    """MAX_QUEUE_PER_KEY: the key over its share gets Ollama's 503 with Retry-After, while
    another key still gets in."""
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "RATE_LIMIT": "1000/minute",
                          "MAX_QUEUE": 8, "MAX_QUEUE_PER_KEY": 2})
    server, url = serve(app)
    try:
        slow_id, slow = start_slow(stack)
        alice = [f"share-{i}-{uuid.uuid4()}" for i in range(2)]
        sent = [queue_up(url, str(uuid.uuid4()), rid, bearer(A)) for rid in alice]
        refused = requests.post(url + "/api/chat", json=chat_body(SHORT, stream=False),
                                headers=bearer(A), timeout=10)
        assert refused.status_code == 503 and refused.json() == {"error": BUSY}
        assert int(refused.headers["Retry-After"]) > 0
        bobs = f"share-bob-{uuid.uuid4()}"
        sent.append(queue_up(url, None, bobs, bearer(B)))
        # each key's places, its tokens (reserved while in line) and streams, for operators
        scraped = requests.get(url + "/metrics", headers=bearer(A), timeout=10).text
        assert 'chatbot_key_queue_places{key="alice",queue="ollama"} 2' in scraped
        assert 'chatbot_key_queue_places{key="bob",queue="ollama"} 1' in scraped
        cancel(stack, slow_id)
        for request in sent:
            request.join(120)
            assert request.response.status_code == 200
        slow.join(30)
        scraped = requests.get(url + "/metrics", headers=bearer(A), timeout=10).text
        assert 'chatbot_key_queue_places{key="alice",queue="ollama"} 0' in scraped
        assert 'chatbot_key_tokens_this_hour{key="alice"}' in scraped
    finally:
        server.shutdown()


def test_embeddings_take_their_turn_in_the_line(keyed, stack):
    """/api/embed, /api/embeddings and /v1/embeddings are jobs of their key in the fair line,
    not a side door to the model: behind a running request they wait, in their turn."""
    _, url = keyed
    slow_id, slow = start_slow(stack)
    sent = {}

    def embed(path, body, rid):
        sent[rid] = requests.post(url + path, json=body, timeout=120,
                                  headers={**bearer(B), "X-Request-ID": rid})

    calls = [("/api/embed", {"model": "all-minilm", "input": ["the sea", "the sky"]}),
             ("/api/embeddings", {"model": "all-minilm", "prompt": "the sea"}),
             ("/v1/embeddings", {"model": "all-minilm", "input": "the sea"})]
    ids = [f"embed-{i}-{uuid.uuid4()}" for i in range(len(calls))]
    threads = [threading.Thread(target=embed, args=(path, body, rid))
               for (path, body), rid in zip(calls, ids)]
    for thread in threads:
        thread.start()
    wait_for(lambda: set(ids) <= set(waiting_ids(url, bearer(B))), what="the embeddings to wait")
    assert not sent  # none answered while the model is busy
    cancel(stack, slow_id)
    for thread in threads:
        thread.join(120)
    slow.join(30)
    embedded, legacy, openai_style = (sent[rid].json() for rid in ids)
    assert [len(v) for v in embedded["embeddings"]] == [384, 384]
    assert len(legacy["embedding"]) == 384
    assert len(openai_style["data"][0]["embedding"]) == 384


def test_a_long_embedding_is_sent_in_slices_and_answered_as_one(stack):
    """Inputs past SLICE go to the line as slices, one job after another (other askers' turns
    in between); the client gets one answer, the same as the slices' own."""
    from chatbot.api.embeddings import SLICE

    def embed(inputs):
        resp = requests.post(stack.url + "/api/embed", json={"model": "all-minilm", "input": inputs},
                             timeout=120)
        assert resp.status_code == 200
        return resp.json()

    inputs = [f"sentence number {i} about the sea" for i in range(2 * SLICE + 8)]
    whole = embed(inputs)
    parts = [embed(inputs[i:i + SLICE]) for i in range(0, len(inputs), SLICE)]
    assert len(whole["embeddings"]) == len(inputs) and list(whole)[:2] == ["model", "embeddings"]
    assert whole["embeddings"] == [e for part in parts for e in part["embeddings"]]
    assert whole["prompt_eval_count"] == sum(part["prompt_eval_count"] for part in parts)


def test_batch_requests_wait_for_every_interactive_one(stack):
    """A key named in BATCH_KEYS, or a request that says X-Priority: batch, goes after every
    interactive request that waits, whoever came first."""
    app = stack.app_with({"API_KEYS": f"alice={A},bob={B}", "BATCH_KEYS": "bob"})
    server, url = serve(app)
    try:
        slow_id, slow = start_slow(stack)
        bobs = [f"bob-batch-{i}-{uuid.uuid4()}" for i in range(2)]
        sent = [queue_up(url, None, rid, bearer(B)) for rid in bobs]
        asked = f"alice-batch-{uuid.uuid4()}"
        sent.append(queue_up(url, None, asked, {**bearer(A), "X-Priority": "batch"}))
        chat = f"alice-chat-{uuid.uuid4()}"
        sent.append(queue_up(url, None, chat, bearer(A)))
        root = {"Authorization": "Bearer key-root-0123456789"}
        admin = stack.app_with({"API_KEYS": f"alice={A},bob={B}",
                                "ADMIN_API_KEYS": "root=key-root-0123456789"})
        admin_server, admin_url = serve(admin)
        try:
            order = waiting_ids(admin_url, root)
        finally:
            admin_server.shutdown()
        assert order[0] == chat and set(order[1:]) == {*bobs, asked}
        cancel(stack, slow_id)
        for request in sent:
            request.join(120)
            assert request.response.status_code == 200
        slow.join(30)
    finally:
        server.shutdown()


def test_with_fair_cost_tokens_a_turn_is_charged_its_tokens(stack):
    """FAIR_COST=tokens: the asker's next turn in the fair order moves by what its request's
    prompt and reply came to, not by one request."""
    from chatbot.line.admission import ROUND, price_per_token
    from chatbot.redis_keys import FAIR

    app = stack.app_with({"FAIR_COST": "tokens", "FAIR_TOKENS_PER_TURN": 10})
    server, url = serve(app)
    try:
        slow_id, slow = start_slow(stack)  # the line stays busy: its fair hash is kept
        sid = str(uuid.uuid4())
        sent = queue_up(url, sid, f"tokens-{uuid.uuid4()}")
        cancel(stack, slow_id)
        sent.join(120)
        final = sent.lines[-1] if sent.lines else {}
        slow.join(30)
        tokens = final["prompt_eval_count"] + final["eval_count"]
        charged = stack.app.extensions["redis"].hget(FAIR.format("ollama"), f"a:{sid}")
        # its turn started at the clock (0 or more): what it holds now is that plus its tokens
        assert charged is not None
        assert int(charged) >= round(tokens * price_per_token(1, 10)) > ROUND
    finally:
        server.shutdown()
