"""The line's Redis scripts (chatbot/line/lua), each run against the real Redis with its edge
cases, and linted. Tests are named after their script: test_<script>_..."""
import json
import shutil
import subprocess
import time
import uuid

import pytest
import redis

from chatbot.line import admission, events, running, scripts, sweep
from chatbot.line.core import Line
from chatbot.redis_keys import (BEAT, BELL, FAIR, INFO, LEASE, LISTENING, THREAD, TOKENS, WAITING,
                                stream_key)

MODEL = "m"


@pytest.fixture
def line(redis_url):
    return Line(redis.Redis.from_url(redis_url), max_queue=3, queue_timeout=60, relay_ttl=60)


@pytest.fixture
def queue():
    return f"scripts-{uuid.uuid4().hex[:8]}"


def lease(line):
    """A live web process's lease."""
    name = f"lease-{uuid.uuid4().hex[:8]}"
    line.redis.set(LEASE.format(name), 1, ex=60)
    return name


def admit(line, queue, owner_lease, rid=None, session=None, **kw):
    rid = rid or str(uuid.uuid4())
    info = {"model": MODEL, "session_id": session or str(uuid.uuid4()), "channel": rid,
            **kw.pop("info", {})}
    return rid, admission.admit(line, rid, queue, info, owner_lease, job={"id": rid}, **kw)


def relay(line, rid):
    return [json.loads(fields[b"e"]) for _, fields in line.redis.xrange(stream_key(rid))]


# --- every script: named arguments, a file, a test, and lint ------------------------------

def test_every_script_is_a_file_with_a_test_here():
    files = sorted(p.stem for p in scripts.LUA.glob("*.lua") if p.stem != "helpers")
    assert files == sorted(scripts.NAMES)
    tested = {name.split("_")[1] for name in globals() if name.startswith("test_")}
    assert set(scripts.NAMES) <= tested, set(scripts.NAMES) - tested


def test_every_script_takes_its_arguments_by_name_and_only_those(line):
    release = line.scripts["release"]
    assert release.keys == ["lock"] and release.args == ["token"]
    with pytest.raises(TypeError, match="missing.*token"):
        release.bound(lock="x")
    with pytest.raises(TypeError, match="unknown.*tokn"):
        release.bound(lock="x", token="t", tokn="t")


def test_every_script_passes_luacheck(tmp_path):
    """What Redis runs (prelude, helpers and the file) has no unused or undefined name."""
    luacheck = shutil.which("luacheck")
    assert luacheck, "luacheck is missing: apt-get install lua-check (.ci/run does)"
    for name in scripts.NAMES:
        (tmp_path / f"{name}.lua").write_text(scripts.source(name)[0])
    out = subprocess.run(
        [luacheck, "--no-color", "--std", "lua51", "--globals", "redis", "cjson", "KEYS", "ARGV",
         "--ignore", "211/KEY", "211/lib", "211/BELL_LENGTH", "211/BELL_TTL", "211/SEQ_SPAN",
         "--", *sorted(str(p) for p in tmp_path.glob("*.lua"))],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# --- admit ----------------------------------------------------------------------------------

def test_admit_gives_places_in_order_and_refuses_past_max_queue(line, queue):
    web = lease(line)
    assert [admit(line, queue, web)[1] for _ in range(3)] == [1, 2, 3]
    with pytest.raises(admission.QueueFull):
        admit(line, queue, web)
    assert line.redis.zcard(WAITING.format(queue)) == 3


def test_admit_refuses_an_id_that_has_a_record_or_a_stream(line, queue):
    web = lease(line)
    rid, position = admit(line, queue, web)
    assert position == 1 and admit(line, queue, web, rid=rid)[1] is None
    old = str(uuid.uuid4())
    line.redis.xadd(stream_key(old), {"e": "{}"})  # a reply stream left by an earlier request
    assert admit(line, queue, web, rid=old)[1] is None
    assert line.redis.zcard(WAITING.format(queue)) == 1


def test_admit_pushes_the_task_only_when_admitted(line, queue):
    web, tasks = lease(line), f"tasks-{queue}"
    rid, _ = admit(line, queue, web, task=(tasks, "m1"))
    admit(line, queue, web, rid=rid, task=(tasks, "m2"))  # refused: its id is taken
    assert line.redis.lrange(tasks, 0, -1) == [b"m1"]


def test_admit_takes_turns_between_askers_by_weight(line, queue):
    line.max_queue = 10
    web = lease(line)
    heavy = [admit(line, queue, web, asker="heavy", weight=1)[0] for _ in range(3)]
    light = admit(line, queue, web, asker="light", weight=1)[0]
    order = [r.decode() for r in line.redis.zrange(WAITING.format(queue), 0, -1)]
    assert order == [heavy[0], light, heavy[1], heavy[2]]
    # a newcomer of the next turn goes before the busy asker's request of that turn
    running.claim(line, queue)  # heavy[0]: the clock at turn 0
    running.claim(line, queue)  # light: its next turn is the same as heavy[1]'s
    line.move(light, queue, ("running",), "done", {"t": events.DONE, "d": {}})  # light has none
    newcomer = admit(line, queue, web, asker="light", weight=1)[0]
    order = [r.decode() for r in line.redis.zrange(WAITING.format(queue), 0, -1)]
    assert order == [newcomer, heavy[1], heavy[2]]
    # weight 0: first come, first served
    fifo = f"{queue}-fifo"
    first = [admit(line, fifo, web, asker=a)[0] for a in ("heavy", "heavy", "light")]
    assert [r.decode() for r in line.redis.zrange(WAITING.format(fifo), 0, -1)] == first


def test_admit_refuses_an_asker_past_its_share_while_others_get_in(line, queue):
    line.max_queue, line.max_per_asker = 10, 2
    web = lease(line)
    first, _ = admit(line, queue, web, asker="b")
    admit(line, queue, web, asker="b")
    running.claim(line, queue)  # a running request still counts against its asker
    with pytest.raises(admission.ShareFull):
        admit(line, queue, web, asker="b")
    assert admit(line, queue, web, asker="a")[1] == 2
    line.move(first, queue, ("running",), "failed", events.NO_REPLY)  # one ends: room again
    assert admit(line, queue, web, asker="b")[1] == 3


def test_admit_counts_a_request_its_client_left_only_for_its_grace(line, queue):
    line.max_queue, line.max_per_asker = 10, 1
    web = lease(line)
    left, _ = admit(line, queue, web, asker="b", info={"resumable": 30})
    assert admission.detach(line, left, web, 30)
    with pytest.raises(admission.ShareFull):  # within its grace it keeps its place
        admit(line, queue, web, asker="b")
    line.redis.hset(INFO.format(left), "detached_until", time.time() - 1)  # grace over
    assert admit(line, queue, web, asker="b")[1] == 2
    assert sweep.sweep(line, queue) == 1  # and the sweep takes it out of the line
    assert line.info(left)["state"] == "cancelled" and relay(line, left)[-1] == events.CLIENT_GONE
    assert line.redis.zcard(WAITING.format(queue)) == 1


def test_admit_puts_batch_requests_after_every_interactive_one(line, queue):
    line.max_queue = 10
    web = lease(line)
    batch = [admit(line, queue, web, asker="bot", weight=1, band=1)[0] for _ in range(2)]
    chats = [admit(line, queue, web, asker=a, weight=1)[0] for a in ("a", "b", "a")]
    order = [r.decode() for r in line.redis.zrange(WAITING.format(queue), 0, -1)]
    assert order == [chats[0], chats[1], chats[2], *batch]  # within a band, fair turns
    assert [running.claim(line, queue).request_id for _ in range(5)] == order


# --- claim ----------------------------------------------------------------------------------

def test_claim_of_an_empty_line_is_none(line, queue):
    assert running.claim(line, queue) is None


def test_claim_takes_the_head_with_its_job_and_its_thread_lock(line, queue):
    web, session = lease(line), str(uuid.uuid4())
    first, _ = admit(line, queue, web, session=session)
    second, _ = admit(line, queue, web, session=session)
    taken = running.claim(line, queue)
    assert taken.request_id == first and taken.job == {"id": first}
    assert taken.lock[0] == THREAD.format(session, MODEL)
    assert line.info(first)["state"] == "running" and line.redis.exists(BEAT.format(first))
    assert relay(line, first)[0]["t"] == events.STARTED
    # the same thread's next turn is claimed, but without the lock its first turn holds
    assert running.claim(line, queue).lock is None
    assert line.info(second)["state"] == "running"


def test_claim_ends_and_skips_requests_whose_client_left_or_that_waited_too_long(line, queue):
    web = lease(line)
    gone_web = lease(line)
    gone, _ = admit(line, queue, gone_web)
    old, _ = admit(line, queue, web)
    fresh, _ = admit(line, queue, web)
    line.redis.delete(LEASE.format(gone_web))  # its web process died
    line.redis.hset(INFO.format(old), "queued_at", time.time() - 61)
    assert running.claim(line, queue).request_id == fresh
    assert line.info(gone)["state"] == "cancelled" and relay(line, gone)[-1] == events.CLIENT_GONE
    assert line.info(old)["state"] == "expired" and relay(line, old)[-1] == line.expired


def test_claim_keeps_a_resumable_request_whose_client_left_for_its_grace(line, queue):
    gone_web = lease(line)
    rid, _ = admit(line, queue, gone_web, info={"resumable": 30})
    line.redis.delete(LEASE.format(gone_web))
    assert running.claim(line, queue).request_id == rid  # the client may still come back
    assert float(line.info(rid)["detached_until"]) > time.time() + 25


def test_claim_takes_one_task_message_when_asked(line, queue):
    web, tasks = lease(line), f"tasks-{queue}"
    admit(line, queue, web, task=(tasks, "m1"))
    admit(line, queue, web, task=(tasks, "m2"))
    running.claim(line, queue, task_list=tasks)
    assert line.redis.llen(tasks) == 1


def test_claim_moves_the_fair_clock_to_the_turn_it_took(line, queue):
    line.max_queue = 10
    web = lease(line)
    for _ in range(3):
        admit(line, queue, web, asker="a", weight=1)
    running.claim(line, queue)
    running.claim(line, queue)
    # the second of a busy asker's: its turn, half a turn late (it yields ties to others)
    assert int(line.redis.hget(FAIR.format(queue), "#clock")) == admission.ROUND * 3 // 2


def test_claim_takes_a_batch_request_that_waited_too_long_first(line, queue):
    line.max_queue, line.order = 10, {**line.order, "batch_wait": 30}
    web = lease(line)
    batch, _ = admit(line, queue, web, asker="bot", weight=1, band=1)
    chats = [admit(line, queue, web, asker=a, weight=1)[0] for a in ("a", "b")]
    assert running.claim(line, queue).request_id == chats[0]  # not waited long yet
    line.redis.hset(INFO.format(batch), "queued_at", time.time() - 31)
    aged = running.claim(line, queue)
    assert aged.request_id == batch and aged.picked == "aged"  # ageing: nothing starves
    assert running.claim(line, queue).request_id == chats[1]


def warm_line(line, queue, passes):
    line.max_queue, line.queue_timeout = 20, 600
    line.order = {**line.order, "warm_passes": passes, "warm_window": 8, "warm_slots": 1}
    return lease(line)


def test_claim_takes_a_thread_the_host_has_warm_within_its_bound(line, queue):
    web, mine = warm_line(line, queue, passes=2), str(uuid.uuid4())
    first, _ = admit(line, queue, web, asker="a", weight=1, session=mine)
    others = [admit(line, queue, web, asker=a, weight=1)[0] for a in ("b", "c", "d")]
    taken = running.claim(line, queue)
    assert taken.request_id == first
    line.move(first, queue, ("running",), "done", {"t": events.DONE, "d": {}}, lock=taken.lock)
    # a's next turn of the same thread comes while b, c, d wait: its prompt is cached
    again, _ = admit(line, queue, web, asker="a", weight=1, session=mine)
    warm = running.claim(line, queue)
    assert warm.request_id == again and warm.picked == "warm"
    assert line.info(others[0])["passed"] == 1.0 and line.info(others[2])["passed"] == 1.0
    # the bound: once b has been passed twice, b goes first, warm or not
    line.redis.hset(INFO.format(others[0]), "passed", 2)
    line.move(again, queue, ("running",), "done", {"t": events.DONE, "d": {}})
    admit(line, queue, web, asker="a", weight=1, session=mine)
    assert running.claim(line, queue).request_id == others[0]


def test_claim_prefers_the_loaded_model_and_passes_nobody_with_warm_order_off(line, queue):
    web = warm_line(line, queue, passes=2)
    loaded = admit(line, queue, web, asker="a", weight=1, info={"model": "big"})[0]
    assert running.claim(line, queue).request_id == loaded
    other = admit(line, queue, web, asker="b", weight=1, info={"model": "small"})[0]
    same = admit(line, queue, web, asker="c", weight=1, info={"model": "big"})[0]
    kept = running.claim(line, queue)
    assert kept.request_id == same and kept.picked == "model"  # no swap while "big" is loaded
    assert running.claim(line, queue).request_id == other
    line.order = {**line.order, "warm_passes": 0}
    plain = [admit(line, queue, web, asker=a, weight=1, info={"model": m})[0]
             for a, m in (("d", "small"), ("e", "big"))]
    assert [running.claim(line, queue).request_id for _ in plain] == plain


def test_claim_takes_the_loaded_model_before_a_warm_thread_on_another(line, queue):
    web, mine = warm_line(line, queue, passes=2), str(uuid.uuid4())
    line.order = {**line.order, "warm_slots": 3}
    done = {"t": events.DONE, "d": {}}
    for asker, session, model in (("a", mine, "small"), ("c", None, "big")):  # big loaded last
        admit(line, queue, web, asker=asker, weight=1, session=session, info={"model": model})
        line.move(running.claim(line, queue).request_id, queue, ("running",), "done", done)
    warm_small = admit(line, queue, web, asker="a", weight=1, session=mine,
                       info={"model": "small"})[0]
    cold_big = admit(line, queue, web, asker="e", weight=1, info={"model": "big"})[0]
    taken = running.claim(line, queue)
    assert taken.request_id == cold_big and taken.picked == "model"  # no swap for a cache hit
    line.move(cold_big, queue, ("running",), "done", done)
    cold_small = admit(line, queue, web, asker="b", weight=1, info={"model": "small"})[0]
    line.redis.zadd(WAITING.format(queue), {cold_small: 0})  # b's turn before a's
    taken = running.claim(line, queue)  # nothing for big waits: the warm thread goes first
    assert taken.request_id == warm_small and taken.picked == "warm"
    assert line.info(cold_small)["passed"] == 1.0


def test_move_charges_the_asker_its_tokens_when_it_ends(line, queue):
    line.max_queue = 10
    web = lease(line)
    big, _ = admit(line, queue, web, asker="docs", weight=1)
    admit(line, queue, web, asker="other", weight=1)  # the line stays busy
    running.claim(line, queue)
    turn = lambda asker: int(line.redis.hget(FAIR.format(queue), f"a:{asker}"))  # noqa: E731
    before = turn("docs")
    # a 4,000-token turn at 500 tokens a turn: eight turns, not one
    charge = round(4000 * admission.price_per_token(1, 500))
    line.move(big, queue, ("running",), "done", {"t": events.DONE, "d": {}}, charge=charge)
    assert turn("docs") == before - admission.ROUND + 8 * admission.ROUND


# --- move -----------------------------------------------------------------------------------

def test_move_happens_once_and_its_client_hears_once(line, queue):
    rid, _ = admit(line, queue, lease(line))
    assert admission.cancel(line, rid) == "queued"
    assert line.move(rid, queue, ("queued",), "expired", line.expired)[0] == 0
    assert line.info(rid)["state"] == "cancelled"
    assert [e["t"] for e in relay(line, rid)] == [events.ERROR]
    assert line.redis.zcard(WAITING.format(queue)) == 0


def test_move_flags_a_running_request_for_cancel_instead(line, queue):
    rid, _ = admit(line, queue, lease(line))
    running.claim(line, queue)
    assert admission.cancel(line, rid) == "running"
    assert line.info(rid)["state"] == "running" and line.info(rid)["cancel"] == 1


def test_move_does_not_declare_a_beating_request_lost(line, queue):
    rid, _ = admit(line, queue, lease(line))
    running.claim(line, queue)
    assert sweep.lose(line, rid, queue) is None
    line.redis.delete(BEAT.format(rid))
    assert sweep.lose(line, rid, queue) == events.LOST
    assert line.info(rid)["state"] == "lost"


def test_move_releases_the_lock_only_with_its_token(line, queue):
    rid, _ = admit(line, queue, lease(line))
    taken = running.claim(line, queue)
    key, _ = taken.lock
    line.move(rid, queue, ("running",), "failed", events.NO_REPLY, lock=(key, "not-its-token"))
    assert line.redis.exists(key)
    line.redis.delete(key)


def test_move_settles_the_tokens_reserved_once(line, queue):
    """A request that never ran gives its reservation back; one that ran counts what it
    generated instead; a second ending changes nothing."""
    web, counter = lease(line), TOKENS.format(f"asker-{uuid.uuid4().hex[:6]}", 0)
    line.redis.set(counter, 100)  # two reservations of 50, as the web makes them
    tally = {"tally_key": counter, "reserved": 50}
    never, _ = admit(line, queue, web, info=tally)
    ran, _ = admit(line, queue, web, info=tally)
    admission.cancel(line, never)
    assert int(line.redis.get(counter)) == 50
    running.claim(line, queue).end({"final": {"done": True, "eval_count": 7}, "content": ""})
    assert int(line.redis.get(counter)) == 7 and line.info(ran)["state"] == "done"
    line.move(ran, queue, ("running",), "failed", events.NO_REPLY, tally=9)
    assert int(line.redis.get(counter)) == 7


def test_a_trip_runs_each_script_once_when_redis_knew_only_some(line, queue):
    """Scripts go by their sha in a round trip: those Redis did not know (it restarted, or
    their first use) run loaded, after the trip, and those it knew are not run again (a chunk
    is not relayed twice)."""
    rid, _ = admit(line, queue, lease(line))
    taken = running.claim(line, queue)
    line.redis.script_flush()
    line.redis.script_load(line.scripts["emit"].script.script)
    taken.chunks.held = [{"t": events.CHUNK, "raw": "{}", "n": 1}]
    taken.end({"final": {"done": True}, "content": ""})
    assert [e["t"] for e in relay(line, rid)] == ["started", "chunk", "done"]
    assert all(line.redis.script_exists(*(s.sha for s in line.scripts.values())))


# --- check ----------------------------------------------------------------------------------

def test_check_says_what_is_due(line, queue):
    web = lease(line)
    said = lambda rid: line.scripts["check"].call(  # noqa: E731
        info=INFO.format(rid), beat=BEAT.format(rid), now=time.time(), queue_timeout=60)
    assert said("nobody") == b"vanished"
    rid, _ = admit(line, queue, web)
    assert said(rid) == b"waiting"
    gone_web = lease(line)
    left, _ = admit(line, queue, gone_web)
    line.redis.delete(LEASE.format(gone_web))
    assert said(left) == b"abandoned"
    line.redis.hset(INFO.format(rid), "queued_at", time.time() - 61)
    assert said(rid) == b"overdue"
    assert sweep.verdict(line, rid, queue) == line.expired  # and the watchdog expires it
    assert said(rid) == b"ended"
    run, _ = admit(line, queue, web)
    running.claim(line, queue)
    assert said(run) == b"running"
    line.redis.delete(BEAT.format(run))
    assert said(run) == b"dead"


# --- beat -----------------------------------------------------------------------------------

def test_beat_goes_on_then_says_why_to_stop(line, queue):
    web = lease(line)
    rid, _ = admit(line, queue, web)
    taken = running.claim(line, queue)
    heart = taken.heartbeat
    line.redis.pexpire(taken.lock[0], 500)
    heart.beat()
    assert heart.why == 0 and line.redis.pttl(taken.lock[0]) > 1000  # lock renewed
    line.redis.hset(INFO.format(rid), "cancel", 1)
    heart.beat()
    assert heart.why == 1 and heart.stop_asked()


def test_beat_tells_a_request_whose_client_is_gone_or_that_ended_elsewhere(line, queue):
    web = lease(line)
    gone, _ = admit(line, queue, web)
    ended, _ = admit(line, queue, lease(line))
    first, second = running.claim(line, queue), running.claim(line, queue)
    line.redis.delete(LEASE.format(web))
    first.heartbeat.beat()
    assert first.heartbeat.why == 2
    line.redis.delete(BEAT.format(ended))
    sweep.lose(line, ended, queue)
    second.heartbeat.beat()
    assert second.heartbeat.why == 3


# --- detach and resume ----------------------------------------------------------------------

def test_detach_only_by_the_process_holding_the_request(line, queue):
    web = lease(line)
    rid, _ = admit(line, queue, web, info={"resumable": 30})
    assert not admission.detach(line, rid, "another-process", 30)
    assert admission.detach(line, rid, web, 30)
    assert float(line.info(rid)["detached_until"]) > time.time() + 25
    admission.cancel(line, rid)
    assert not admission.detach(line, rid, web, 30)  # it has ended


def test_resume_moves_the_request_to_the_process_the_client_came_back_through(line, queue):
    rid, _ = admit(line, queue, lease(line), info={"resumable": 30})
    came_back = f"lease-{uuid.uuid4().hex[:8]}"
    admission.detach(line, rid, line.info(rid)["lease"], 30)
    assert admission.resume(line, rid, came_back) == "queued"
    info = line.info(rid)
    assert info["lease"] == came_back and "detached_until" not in info
    assert line.redis.exists(LEASE.format(came_back))
    assert admission.resume(line, "nobody", came_back) is None


# --- release --------------------------------------------------------------------------------

def test_release_only_by_the_lock_holder(line):
    key = THREAD.format(uuid.uuid4(), MODEL)
    line.redis.set(key, "mine")
    assert line.scripts["release"].call(lock=key, token="yours") == 0
    assert line.scripts["release"].call(lock=key, token="mine") == 1
    assert not line.redis.exists(key)


# --- emit -----------------------------------------------------------------------------------

def test_emit_appends_and_rings_each_chunk_after_the_one_before(line, queue):
    web = lease(line)
    rid, _ = admit(line, queue, web)
    emit = running.Chunks(line, rid, rid, quiet=False)
    emit(events.chunk('{"a": 1}'))
    emit(events.chunk('{"a": 2}'))
    chunks = relay(line, rid)
    assert [c["n"] for c in chunks] == [1, 2]
    rings = line.redis.xrange(BELL.format(web))
    assert [r[b"p"] for _, r in rings] == [b"0-0", rings[0][1][b"i"]]


def test_emit_of_a_quiet_request_rings_only_for_its_ending(line, queue):
    web = lease(line)
    rid, _ = admit(line, queue, web, info={"quiet": 1})
    taken = running.claim(line, queue)
    rings_before = line.redis.xlen(BELL.format(web))  # `started` rings
    running.Chunks(line, rid, rid, quiet=False)(events.chunk("{}"))
    assert line.redis.xlen(BELL.format(web)) == rings_before
    taken.end({"final": {"done": True}, "content": "", "status": "ok"})
    assert line.redis.xlen(BELL.format(web)) == rings_before + 1
    assert relay(line, rid)[-1]["t"] == events.DONE


# --- announce -------------------------------------------------------------------------------

def test_announce_tells_listeners_their_place_and_the_queue_its_depth(line, queue):
    web = lease(line)
    first, _ = admit(line, queue, web)
    second, _ = admit(line, queue, web)
    pubsub = line.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(second, events.QUEUE_CHANNEL)
    admission.listen(line, second, 1)
    try:
        running.claim(line, queue)  # the first leaves the line: the second is next
        heard = []
        deadline = time.monotonic() + 2
        while len(heard) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message:
                heard.append(json.loads(message["data"]))
        position = [m for m in heard if m["type"] == "queued"]
        depth = [m for m in heard if m["type"] == "depth" and m["data"]["queue"] == queue]
        assert position[0]["data"] == {"position": 1} and depth[0]["data"]["waiting"] == 1
    finally:
        admission.listen(line, second, -1)
        pubsub.close()


def test_announce_drops_the_listeners_of_a_request_no_longer_waiting(line, queue):
    """The listener registry forgets a request once it has left the line (the web process of
    its listeners may have died without saying so)."""
    rid, _ = admit(line, queue, lease(line))
    future = f"not-sent-yet-{uuid.uuid4()}"
    admission.listen(line, rid, 1)
    admission.listen(line, future, 1)  # subscribed before its request is sent: kept
    running.claim(line, queue)  # it runs: no place to announce any more
    assert not line.redis.hexists(LISTENING, rid) and line.redis.hexists(LISTENING, future)
    admission.listen(line, future, -1)
