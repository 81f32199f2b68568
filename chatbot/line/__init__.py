"""The line: a request's life, queued -> running -> done | failed | cancelled | lost | expired.
Only this package moves a request between states, and each move is one Redis script (lua/)
that checks the state it leaves, so it happens once: a redelivered task, a second watchdog or
a late worker finds the request already moved and does nothing. The same script appends the
request's relay event and its SSE notice, so a client hears of every ending exactly once.

Who calls what: the web admits, cancels, detaches and resumes (admission) and reads its
request's events (relay); a worker claims a request and ends it through its Running handle
(running, heartbeat); a waiting client's watchdog and beat's sweep end what no worker will
(sweep). The line (core) holds the client, settings and scripts; events says what clients
hear; the key names are in chatbot.redis_keys."""
from flask import current_app

from chatbot.line.core import Line


def init_app(app, on_lost=None):
    """The app's line; `on_lost(request id, record, partial reply)` when a worker died."""
    config = app.config
    share = config.get("MAX_QUEUE_PER_KEY")
    if share is None:  # by default no asker may hold more than a quarter of the line
        share = max(1, config["MAX_QUEUE"] // 4)
    app.extensions["line"] = Line(app.extensions["redis"], config["MAX_QUEUE"],
                                  config["QUEUE_TIMEOUT_SECONDS"], config["RELAY_TTL_SECONDS"],
                                  config["REDIS_WAIT_SECONDS"], on_lost, share,
                                  config["MAX_JOB_BYTES"], order={
                                      "batch_wait": config["BATCH_MAX_WAIT_SECONDS"],
                                      "warm_passes": config["WARM_PASSES"],
                                      "warm_window": config["WARM_WINDOW"],
                                      "warm_slots": config["WARM_SLOTS"]})


def get():
    return current_app.extensions["line"]
