"""Every Redis key chatbot writes, in one place (the line's Lua scripts get theirs from here,
see chatbot.line.scripts). `{}` is filled with the id named beside it.

The line, per queue: WAITING the requests waiting, in the order they will run (a sorted set) ·
FAIR that order's clock and each asker's next turn · STARTED the requests running, one per
worker · ASKED the requests of one asker waiting or running (its share). Per request: INFO what
it is (state, queue, session, model, lease, cancel flag, its SSE channel, ...) · JOB what a
worker runs, until one takes it · BEAT alive while its worker beats · RELAY its events, in
order (a stream) · THREAD the lock a turn holds on its session's thread. Per web process: LEASE
alive while it lives · BELL its doorbell, rung with each event for a request it waits on.
LISTENING how many SSE clients listen to each request's position."""

WAITING = "chatbot:waiting:{}"  # queue
FAIR = "chatbot:fair:{}"  # queue
STARTED = "chatbot:started:{}"  # queue
ASKED = "chatbot:asked:{}:{}"  # queue, asker: the requests of one asker in line or running
INFO = "chatbot:req:{}"  # request id
JOB = "chatbot:job:{}"  # request id
BEAT = "chatbot:beat:{}"  # request id
RELAY = "chatbot:relay:{}"  # request id
THREAD = "chatbot:thread:{}:{}"  # session id, model
LEASE = "chatbot:lease:{}"  # a web process's lease
BELL = "chatbot:bell:{}"  # a web process's lease
LISTENING = "chatbot:listening"
NONE = "chatbot:none"  # a script's key when it has none to give (no lock, no counter, ...)

CALIBRATION = "chatbot:calibration"  # host|model -> what its tokenizer counts against ours
STICKY = "chatbot:sticky:{}"  # session id -> the host that served it
METRIC = "chatbot:metric:"  # + a metric's name
STREAMS = "chatbot:streams:{}"  # asker: its open SSE streams, each until it lapses
SSE_WAKE = "chatbot:sse-wake:{}"  # a web process's SSE hub: a channel rung to take a new one
TOKENS = "chatbot:tokens:{}:{}"  # asker, clock hour: tokens generated and reserved
TOKENS_KEPT = 7200  # seconds an hour's count is kept
SAME = "chatbot:same:{}"  # what makes a request the same as a retry of it: its id, while it lives
RESPONSE = "chatbot:response:{}"  # a request's cache key: the reply it had (RESPONSE_CACHE_TTL)
STORED = "chatbot:stored:{}"  # key name: the bytes its sessions store, as last counted
WARM = "chatbot:warm:{}"  # queue: the threads (session|model) its host served last, newest first
SERVICE = "chatbot:service:{}:{}"  # queue, model: how long its last turns ran (chatbot.line.eta)


def stream_key(request_id):
    return RELAY.format(request_id)


def lua_prefixes():
    """The per-id keys as prefixes a script appends an id to: {'req': 'chatbot:req:', ...}."""
    return {"req": INFO[:-2], "job": JOB[:-2], "beat": BEAT[:-2], "relay": RELAY[:-2],
            "thread": THREAD[:-5], "lease": LEASE[:-2], "bell": BELL[:-2],
            "listening": LISTENING, "same": SAME[:-2]}
