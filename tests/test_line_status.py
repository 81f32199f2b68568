"""A waiting request's estimate (chatbot.line.eta): on GET /api/queue/<id> from its model's
measured runs, and, for a key or request that opts in (QUEUE_STATUS_IN_THINKING,
X-Queue-Status: thinking), as thinking at the head of its stream, which an unmodified client
shows and which is never stored."""
import json
import uuid

import ollama
import openai
import pytest
import requests

from tests.conftest import MODEL, serve
from tests.test_queue import LONG, SHORT, Background, chat_body, wait_for


def measured(url):
    """Two short turns: the model's runs are measured."""
    for _ in range(2):
        requests.post(url + "/api/chat", json=chat_body(SHORT, stream=False), timeout=60)


def blocked(url):
    """A long generation running (the line's only worker is busy): (its thread, its id)."""
    request_id = str(uuid.uuid4())
    blocker = Background(url, chat_body(LONG), request_id=request_id)
    wait_for(lambda: requests.get(f"{url}/api/queue/{request_id}", timeout=5).json()
             .get("state") == "running", what="the blocker to run")
    return blocker, request_id


def unblock(url, request_id, blocker):
    requests.delete(f"{url}/api/queue/{request_id}", timeout=10)
    blocker.join(60)


def test_a_waiting_request_has_an_estimate_from_measured_runs(stack):
    measured(stack.url)
    blocker, running = blocked(stack.url)
    try:
        waiting_id = str(uuid.uuid4())
        waiter = Background(stack.url, chat_body(SHORT), request_id=waiting_id)
        state = wait_for(lambda: (lambda s: s if s.get("state") == "queued" else None)(
            requests.get(f"{stack.url}/api/queue/{waiting_id}", timeout=5).json()),
            what="the second request to wait")
        assert state["position"] == 1
        # measured (short runs): the blocker's remainder counts at least a tenth of a run
        assert state["start_in"] is not None and state["start_in"] > 0
        assert state["finish_in"] > state["start_in"]
        # The running request has no estimate of its own: it does not wait.
        mine = requests.get(f"{stack.url}/api/queue/{running}", timeout=5).json()
        assert mine["start_in"] is None
    finally:
        unblock(stack.url, running, blocker)
    waiter.join(60)


def thinking_then_content(chunks):
    thinking = "".join(c["message"].get("thinking") or "" for c in chunks)
    first_content = next(i for i, c in enumerate(chunks) if c["message"].get("content"))
    told = [i for i, c in enumerate(chunks)
            if "Waiting in line" in (c["message"].get("thinking") or "")]
    return thinking, told, first_content


@pytest.fixture(scope="module")
def told_url(stack):
    """A web whose every key (keys are off: everyone) is told its place as thinking."""
    server, url = serve(stack.app_with({"QUEUE_STATUS_IN_THINKING": "all"}))
    yield url
    server.shutdown()


def test_an_unmodified_ollama_client_is_told_its_place_as_thinking(stack, told_url):
    measured(stack.url)
    blocker, running = blocked(stack.url)
    sid = str(uuid.uuid4())
    stream = ollama.Client(host=told_url, headers={"X-Session-ID": sid}).chat(
        MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True,
        options={"temperature": 0, "seed": 42, "num_predict": 4})
    chunks = [next(stream)]  # the place in line, while the blocker still runs
    assert "Waiting in line: you are next" in (chunks[0].message.thinking or "")
    unblock(stack.url, running, blocker)
    chunks += list(stream)
    thinking, told, first_content = thinking_then_content([c.model_dump() for c in chunks])
    assert told and max(told) < first_content  # before the reply, never inside it
    rows = stack.rows(sid)
    assert [r.role for r in rows] == ["user", "assistant"]
    assert "Waiting" not in str(rows[1].extra or "") and "Waiting" not in rows[1].content


def test_one_request_may_ask_and_the_openai_door_tells_it_as_reasoning(stack):
    measured(stack.url)
    blocker, running = blocked(stack.url)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=4,
        temperature=0, extra_headers={"X-Queue-Status": "thinking"})
    first = next(iter(stream))
    assert "Waiting in line" in first.choices[0].delta.model_extra.get("reasoning", "")
    unblock(stack.url, running, blocker)
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")


def test_without_opting_in_nothing_changes(stack):
    measured(stack.url)
    blocker, running = blocked(stack.url)
    waiter = Background(stack.url, chat_body(SHORT))
    wait_for(lambda: requests.get(stack.url + "/api/queue", timeout=5).json()["queues"][0]
             ["depth"] >= 1, what="a request waiting")
    unblock(stack.url, running, blocker)
    waiter.join(60)
    assert waiter.lines and not any("Waiting in line" in json.dumps(line) for line in waiter.lines)


def test_an_estimate_prices_each_request_by_its_askers_runs(redis_url):
    """A document summarizer's requests ahead count as its long runs, a chat's as short ones;
    an asker never measured is priced by its model's runs."""
    import redis as redis_py

    from chatbot.line import eta
    from chatbot.line.core import Line
    from tests.test_line_scripts import admit, lease

    line = Line(redis_py.Redis.from_url(redis_url), max_queue=10, queue_timeout=60,
                relay_ttl=60)
    queue = f"eta-{uuid.uuid4().hex[:8]}"
    pipe = line.redis.pipeline()
    for asker, seconds in (("docs", 20.0), ("chat", 1.0)):
        eta.record(pipe, queue, "m", asker, seconds)
    pipe.execute()
    web = lease(line)
    ids = [admit(line, queue, web, asker=a, weight=1)[0] for a in ("docs", "chat", "new")]
    board = eta.estimates(line, queue)
    assert [board[i]["start_in"] for i in ids] == [0.0, 20.0, 21.0]
    # the model's median of its runs (1 and 20): 10.5
    assert board[ids[2]]["finish_in"] == 31.5


def test_an_estimate_prices_a_request_by_its_size_too(redis_url):
    """A chat's opening notes are priced as its long runs, its questions as its short ones; a
    size its asker never sent, as the model's runs of that size."""
    import redis as redis_py

    from chatbot.line import eta
    from chatbot.line.core import Line
    from tests.test_line_scripts import admit, lease

    line = Line(redis_py.Redis.from_url(redis_url), max_queue=10, queue_timeout=60,
                relay_ttl=60)
    queue = f"eta-{uuid.uuid4().hex[:8]}"
    notes, question = [{"role": "user", "content": "n" * 5000}], [{"role": "user", "content": "q"}]
    assert (eta.size(notes), eta.size(question)) == ("m", "s")
    pipe = line.redis.pipeline()
    for asker, seconds, sent in (("chat", 6.0, notes), ("chat", 1.0, question),
                                 ("docs", 20.0, [{"content": "d" * 9000}])):
        eta.record(pipe, queue, "m", asker, seconds, eta.size(sent))
    pipe.execute()
    web = lease(line)
    ids = [admit(line, queue, web, asker=a, weight=1, info={"size": s})[0]
           for a, s in (("chat", "m"), ("chat", "s"), ("new", "l"), ("new", "m"))]
    board = eta.estimates(line, queue)
    assert [board[i]["finish_in"] - board[i]["start_in"] for i in ids] == [6.0, 1.0, 20.0, 6.0]
