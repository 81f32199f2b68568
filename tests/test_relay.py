"""The relay's doorbell (chatbot.line.relay.Hub): a ring carries its event, and a ring that went
missing is made up for by reading the request's stream, with no event lost or given twice."""
import queue
import uuid

from chatbot.line.admission import admit
from chatbot.line.relay import Hub
from chatbot.line.running import Chunks
from chatbot.redis_keys import BELL
from tests.conftest import MODEL


def drain(inbox):
    out = []
    while True:
        try:
            out.append(inbox.get_nowait())
        except queue.Empty:
            return out


def test_rings_hand_events_over_and_a_lost_ring_is_read_from_the_stream(stack):
    client, line = stack.app.extensions["redis"], stack.app.extensions["line"]
    hub = Hub(client)  # not started: this test plays its loop by hand
    rid, q = f"bell-{uuid.uuid4()}", f"bell-{uuid.uuid4().hex[:8]}"
    admit(line, rid, q, {"model": MODEL, "session_id": str(uuid.uuid4()), "channel": rid},
          hub.lease)
    emit = Chunks(line, rid, rid, quiet=False)
    inbox = hub.watch(rid).inbox
    for n in range(5):
        emit({"t": "chunk", "raw": f'{{"n": {n}}}'})
    rings = client.xrange(BELL.format(hub.lease))
    assert len(rings) == 5 and all(f[b"r"].decode() == rid for _, f in rings)
    gaps = set()
    for _, ring in rings[:2]:  # in order: handed over from the ring alone
        hub.hand_over(ring, gaps)
    assert not gaps and [e["raw"] for e in drain(inbox)] == ['{"n": 0}', '{"n": 1}']
    for _, ring in rings[3:]:  # the third ring was trimmed away unread
        hub.hand_over(ring, gaps)
    assert gaps == {rid} and drain(inbox) == []
    hub.read(gaps)  # the stream from the last event the waiter has
    assert [e["raw"] for e in drain(inbox)] == ['{"n": 2}', '{"n": 3}', '{"n": 4}']
    for _, ring in rings:  # rings seen again (the hub read past them) change nothing
        hub.hand_over(ring, set())
    assert drain(inbox) == []
    # A client that comes back while the first still waits: its waiter reads from the start,
    # and the first goes on from where it was.
    again = hub.watch(rid, again=True)
    emit({"t": "chunk", "raw": '{"n": 5}'})
    gaps = set()
    for _, ring in client.xrange(BELL.format(hub.lease))[5:]:
        hub.hand_over(ring, gaps)
    assert [e["raw"] for e in drain(inbox)] == ['{"n": 5}'] and gaps == {rid}
    hub.read(gaps)
    assert [e["raw"] for e in drain(again.inbox)] == [f'{{"n": {n}}}' for n in range(6)]
    hub.unwatch(rid, again)
    assert hub.waiters[rid] != [] and hub.watch(rid).inbox is inbox
