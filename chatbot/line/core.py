"""The line's state and its one way of moving a request: Line holds the Redis client, the
settings and the scripts, moves a request between states (the `move` script: at most once),
and reads what others show (a request's record, its place, the line's depth).

States: queued -> running -> done | failed | cancelled | lost, and queued -> cancelled |
expired. Who moves a request: the web admits it and cancels it (chatbot.line.admission), a
worker claims and ends it (chatbot.line.running), a waiting client's watchdog or the sweep
expires it or declares it lost (chatbot.line.admission.verdict, chatbot.line.sweep)."""
import json
import time

from chatbot.line import events, scripts
from chatbot.redis_keys import BEAT, FAIR, INFO, NONE, STARTED, TOKENS_KEPT, WAITING, stream_key
from chatbot.upstream import empty_reply, fold

INFO_TTL = 3600  # seconds a request's record outlives its last change


class Line:
    def __init__(self, client, max_queue, queue_timeout, relay_ttl, redis_wait=0.0,
                 on_lost=None, max_per_asker=0, max_job_bytes=0, order=None):
        self.redis = client
        # How a worker picks from the line (lua/claim.lua): batch_wait, warm_passes,
        # warm_window, warm_slots (0: plain fair order).
        self.order = {"batch_wait": 0, "warm_passes": 0, "warm_window": 8, "warm_slots": 1,
                      **(order or {})}
        self.max_queue, self.queue_timeout, self.relay_ttl = max_queue, queue_timeout, relay_ttl
        self.max_per_asker = max_per_asker  # one asker's requests waiting or running; 0: any
        self.max_job_bytes = max_job_bytes  # what one waiting request holds in Redis; 0: any
        # A waiting client outlasts a Redis that does not answer for this long (a restart of a
        # Redis that keeps the line); `away` is since when this process has not reached it.
        self.redis_wait, self.away = redis_wait, None
        # What must happen elsewhere when a request is lost: on_lost(id, record, partial reply)
        # (the app stores the partial reply; the line writes no SQL).
        self.on_lost = on_lost
        self.scripts = scripts.load(client)
        self.expired = events.expired(queue_timeout)

    def move(self, request_id, queue, from_states, to_state, event, only_if_dead=False,
             cancel_running=False, lock=None, tally=None, then=None, before=(), after=None,
             charge=None):
        """Move a request from one of `from_states` to `to_state` with its final `event`
        (lua/move.lua), its `tally` (tokens generated, if known) settled against its
        reservation, and its `charge` in the fair order (if now known). `after`: a
        running.NextClaim sent behind it, in the same round trip. Returns [1 if it moved, the
        state it was in, ...]."""
        key, token = lock or (NONE, "")
        ending = self.scripts["move"].bound(
            info=INFO.format(request_id), stream=stream_key(request_id),
            waiting=WAITING.format(queue), beat=BEAT.format(request_id),
            started=STARTED.format(queue), lock=key, fair=FAIR.format(queue),
            request_id=request_id, from_states=",".join(from_states), to_state=to_state,
            now=time.time(), event=json.dumps(event), notice=events.sse_notice(event),
            lock_token=token, ttl=self.relay_ttl, only_if_dead="1" if only_if_dead else "0",
            cancel_running="1" if cancel_running else "0", **self.announcing(queue),
            tally="" if tally is None else int(tally), tally_ttl=TOKENS_KEPT,
            charge="" if charge is None else int(charge))
        # The events `before`, the ending (its client hears at once), the next claim, then
        # `then`'s writes (whose failures are theirs: a metric never fails a request) and the
        # next claim's reads.
        writes = len(then.pipe) if then is not None else 0

        def behind(pipe):
            if then is not None:
                then.into(pipe)
            if after is not None:
                after.queue_reads(pipe)

        ran, rest = self.one_trip([*before, ending, *([after.call] if after else [])], behind)
        if after is not None:
            after.take(ran[-1], rest[writes:])
            return ran[-2]
        return ran[-1]

    def one_trip(self, calls, then=None, first=None):
        """Run scripts [Script.bound(...)] in one round trip, by their sha (loading them first
        would cost a trip of its own), after what `first(pipe)` queues and followed by what
        `then(pipe)` queues. Returns (the scripts' results, raising any error among them;
        first's and then's results, as they came). Scripts Redis did not know (it restarted,
        or this is their first use) did not run: every script of the line is loaded, and those
        run, one by one; the others ran and do not run twice. (The scripts sent this way are
        loaded only here, all at once, so none is missing while one before it ran.)"""
        pipe = self.redis.pipeline(transaction=False)
        if first is not None:
            first(pipe)
        before = len(pipe)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if then is not None:
            then(pipe)
        results = pipe.execute(raise_on_error=False)
        ran = results[before:before + len(calls)]
        rest = results[:before] + results[before + len(calls):]
        if any(isinstance(r, scripts.NoScriptError) for r in ran):
            scripts.load_all(self.redis, self.scripts)
            ran = [script.script(keys=keys, args=args) if isinstance(r, scripts.NoScriptError)
                   else r for (script, keys, args), r in zip(calls, ran)]
        for result in ran:
            if isinstance(result, Exception):
                raise result
        return ran, rest

    @staticmethod
    def announcing(queue):
        """The arguments of a script that announces the line of `queue`."""
        return {"queue_channel": events.QUEUE_CHANNEL, "position_fmt": events.POSITION,
                "depth_fmt": events.depth_template(queue)}

    def announce(self, queue):
        """Every waiting request that listens hears its position, the queue channel the depth."""
        self.scripts["announce"].call(waiting=WAITING.format(queue), **self.announcing(queue))

    def info(self, request_id):
        raw = self.redis.hgetall(INFO.format(request_id))
        return {k.decode(): _number(v.decode()) for k, v in raw.items()}

    def position(self, request_id, queue):
        rank = self.redis.zrank(WAITING.format(queue), request_id)
        return None if rank is None else rank + 1

    def notice(self, channel, event, data):
        """Tell a request's SSE listeners something more, after it ended too (a session's
        title)."""
        self.redis.publish(channel, events.sse_message(event, data))

    def waiting(self, queue):
        """How many requests wait in line (one command: a title asks it at every token)."""
        return self.redis.zcard(WAITING.format(queue))

    def counts(self, queue):
        """(requests waiting, requests running: one per worker), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(WAITING.format(queue))
        pipe.scard(STARTED.format(queue))
        waiting, running = pipe.execute()
        return waiting, running

    def load(self, queue):
        """Requests waiting plus the one running: what a new request would wait behind."""
        return sum(self.counts(queue))

    def snapshot(self, queue):
        """Depth, the running request (the longest running, if several workers share the
        queue) and the waiting ones, for GET /api/queue."""
        now = time.time()
        running = sorted(self.redis.smembers(STARTED.format(queue)))
        waiting = self.redis.zrange(WAITING.format(queue), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for rid in running + waiting:
            pipe.hgetall(INFO.format(rid.decode()))
        infos = [{k.decode(): _number(v.decode()) for k, v in raw.items()} for raw in pipe.execute()]
        describe = lambda rid, info: {  # noqa: E731
            "request_id": rid.decode(), "model": info.get("model"),
            "session_id": info.get("session_id"), "owner": info.get("owner") or None}
        out = {"queue": queue, "depth": len(waiting), "running": None, "waiting": []}
        started = sorted(((info.get("started_at", now), rid, info)
                          for rid, info in zip(running, infos[:len(running)])),
                         key=lambda entry: entry[0])
        if started:
            started_at, rid, info = started[0]
            out["running"] = {**describe(rid, info), "running_for": round(now - started_at, 3)}
        for position, (rid, info) in enumerate(zip(waiting, infos[len(running):]), 1):
            out["waiting"].append({**describe(rid, info), "position": position,
                                   "age": round(now - info.get("queued_at", now), 3)})
        return out

    def partial_reply(self, request_id):
        """What a request streamed so far, folded into a reply."""
        reply = empty_reply()
        for _, fields in self.redis.xrange(stream_key(request_id)):
            event = json.loads(fields[b"e"])
            if event["t"] == events.CHUNK:
                fold(reply, json.loads(event["raw"]))
        return reply


def _number(text):
    try:
        return float(text)
    except ValueError:
        return text
