"""How long until a waiting request starts and ends, from what its line has measured: each
request a worker ends adds how long it ran to its queue's record for its model, and for its
asker with that model (the last SAMPLES, newest first), and an estimate sums, for what runs
and what waits ahead, the median of its asker's runs (else its model's; less what the running
one has run already), then adds the request's own.
Nothing is guessed for a model never measured: the estimate then says only the position."""
import statistics
import time

from chatbot.redis_keys import INFO, SERVICE, STARTED, WAITING

SAMPLES = 20
KEPT = 7 * 24 * 3600  # seconds a model's record outlives its last run
ASKER_KEPT = 3600  # ... and an asker's with it
BOARD_SECONDS = 1.0  # how old a process's reading of the line may be (estimate(fresh=False))
_boards = {}  # (line, queue) -> (when read, its estimates): this process's last reading


def record(pipe, queue, model, asker, seconds):
    """Queue onto `pipe` a run of `seconds` of `model` on `queue` for `asker`: kept for the
    model, and for the asker with it (an asker sends much the same each time: a document
    summarizer's runs are long, a chat's next turn short), for an hour."""
    for key, kept in ((SERVICE.format(queue, model), KEPT),
                      (SERVICE.format(queue, f"{model}|{asker}"), ASKER_KEPT)):
        pipe.lpush(key, round(seconds, 3))
        pipe.ltrim(key, 0, SAMPLES - 1)
        pipe.expire(key, kept)


def estimate(line, request_id, queue, fresh=True):
    """{"position", "ahead", "start_in", "finish_in"} for a waiting request (the times in
    seconds, None where a model ahead or its own was never measured), or None when it does
    not wait. Not `fresh`: from this process's reading of the whole line, at most
    BOARD_SECONDS old (what thousands of waiting clients told every few seconds share)."""
    now, which = time.monotonic(), (id(line), queue)
    taken, board = _boards.get(which, (0.0, {}))
    # A request not on the board may have come since it was read: read it again.
    if fresh or now - taken > BOARD_SECONDS or request_id not in board:
        board = estimates(line, queue)
        _boards[which] = (now, board)
    return board.get(request_id)


def estimates(line, queue):
    """The estimate of every request waiting in `queue`, by id, read in three round trips."""
    redis = line.redis
    waiting = [rid.decode() for rid in redis.zrange(WAITING.format(queue), 0, -1)]
    if not waiting:
        return {}
    running = [rid.decode() for rid in redis.smembers(STARTED.format(queue))]
    pipe = redis.pipeline(transaction=False)
    for rid in running + waiting:
        pipe.hmget(INFO.format(rid), "model", "started_at", "asker")
    fallbacks, rows = {}, []
    for model, started_at, asker in pipe.execute():
        model = model.decode() if model else ""
        mine = f"{model}|{asker.decode() if asker else ''}"
        rows.append((mine, float(started_at) if started_at else None))
        fallbacks[mine] = model  # its asker's runs, else its model's
    medians = _medians(redis, queue, fallbacks)
    now, start_in = time.time(), 0.0
    for runs_of, started_at in rows[:len(running)]:
        if medians.get(runs_of) is None:
            start_in = None
            break
        # One running longer than its model's median is taken to end soon: a tenth of it left.
        start_in += max(medians[runs_of] - (now - (started_at or now)), medians[runs_of] / 10)
    out = {}
    for rank, (rid, (runs_of, _)) in enumerate(zip(waiting, rows[len(running):])):
        own = medians.get(runs_of)
        finish_in = None if start_in is None or own is None else start_in + own
        out[rid] = {"position": rank + 1, "ahead": rank, "start_in": _round(start_in),
                    "finish_in": _round(finish_in)}
        start_in = finish_in
    return out


def _medians(redis, queue, fallbacks):
    """{name: the median of its runs, else of its fallback's (None if neither ran)} for
    {name: fallback}."""
    names = sorted({*fallbacks, *fallbacks.values()})
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.lrange(SERVICE.format(queue, name), 0, -1)
    found = {name: statistics.median(float(s) for s in runs) if runs else None
             for name, runs in zip(names, pipe.execute())}
    return {name: found[name] if found[name] is not None else found[fallback]
            for name, fallback in fallbacks.items()}


def _round(seconds):
    """To the hundredth; a wait, however short, is not 0."""
    return None if seconds is None else max(round(seconds, 2), 0.01 if seconds > 0 else 0.0)


def said(estimate):
    """The estimate in words, for a client that shows only text (QUEUE_STATUS_IN_THINKING)."""
    ahead = estimate["ahead"]
    where = "you are next" if ahead == 0 else f"{ahead} ahead of you"
    if estimate["start_in"] is None:
        return f"Waiting in line: {where}.\n"
    return f"Waiting in line: {where}, starting in about {_duration(estimate['start_in'])}.\n"


def _duration(seconds):
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"
