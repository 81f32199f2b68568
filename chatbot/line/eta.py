"""How long until a waiting request starts and ends, from what its line has measured: each
request a worker ends adds how long it ran to its queue's record for its model, for the
model's requests of its size (what it sent: a question, a page, a document) and for its
asker's of that size (the last SAMPLES, newest first), and an estimate sums, for what runs and what waits ahead, the
median of the best of those that ran (runs_of; less what the running one has run already),
then adds the request's own.
Nothing is guessed for a model never measured: the estimate then says only the position."""
import statistics
import time

from chatbot.redis_keys import INFO, SERVICE, STARTED, WAITING

SAMPLES = 20
KEPT = 7 * 24 * 3600  # seconds a model's record outlives its last run
ASKER_KEPT = 3600  # ... and an asker's with it
BOARD_SECONDS = 1.0  # how old a process's reading of the line may be (estimate(fresh=False))
_boards = {}  # (line, queue) -> (when read, its estimates): this process's last reading


def size(messages):
    """A request's size class, from the characters it sent: "s" (a question), "m" (a page),
    "l" (a document). What the model must read, most of a run on a CPU, goes with it."""
    chars = sum(len(m.get("content") or "") for m in messages or () if isinstance(m, dict))
    return "s" if chars < 1000 else "m" if chars < 8000 else "l"


def runs_of(model, asker, sized):
    """Whose runs price a request, best first: its asker's of its size with its model (an
    asker sends much the same each time: a document summarizer's runs are long, a chat's next
    turn short, its opening notes long), else the model's of that size, else the model's."""
    return f"{model}|{asker}|{sized}", f"{model}||{sized}", model


def record(pipe, queue, model, asker, seconds, sized="s"):
    """Queue onto `pipe` a run of `seconds` of `model` on `queue` for `asker`, of size class
    `sized`: kept for each name of runs_of (the asker's for an hour)."""
    mine, kind, whole = runs_of(model, asker, sized)
    for key, kept in ((SERVICE.format(queue, whole), KEPT), (SERVICE.format(queue, kind), KEPT),
                      (SERVICE.format(queue, mine), ASKER_KEPT)):
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
        pipe.hmget(INFO.format(rid), "model", "started_at", "asker", "size")
    chains, rows = {}, []
    for model, started_at, asker, sized in pipe.execute():
        chain = runs_of(model.decode() if model else "", asker.decode() if asker else "",
                        sized.decode() if sized else "s")
        rows.append((chain[0], float(started_at) if started_at else None))
        chains[chain[0]] = chain
    medians = _medians(redis, queue, chains)
    now, start_in = time.time(), 0.0
    for priced_by, started_at in rows[:len(running)]:
        if medians.get(priced_by) is None:
            start_in = None
            break
        # One running longer than its model's median is taken to end soon: a tenth of it left.
        start_in += max(medians[priced_by] - (now - (started_at or now)), medians[priced_by] / 10)
    out = {}
    for rank, (rid, (priced_by, _)) in enumerate(zip(waiting, rows[len(running):])):
        own = medians.get(priced_by)
        finish_in = None if start_in is None or own is None else start_in + own
        out[rid] = {"position": rank + 1, "ahead": rank, "start_in": _round(start_in),
                    "finish_in": _round(finish_in)}
        start_in = finish_in
    return out


def _medians(redis, queue, chains):
    """{name: the median of the runs of the first name of its chain that ran (None if none
    did)} for {name: its chain of names}."""
    names = sorted({name for chain in chains.values() for name in chain})
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.lrange(SERVICE.format(queue, name), 0, -1)
    found = {name: statistics.median(float(s) for s in runs) if runs else None
             for name, runs in zip(names, pipe.execute())}
    return {name: next((found[n] for n in chain if found[n] is not None), None)
            for name, chain in chains.items()}


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
