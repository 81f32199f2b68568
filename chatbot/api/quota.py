"""How much an asker (a key while keys are on, else a client address) may ask: requests per
window on each route (RATE_LIMIT, e.g. "60/minute", flask-limiter on Redis) and on all routes
together (RATE_LIMIT_PER_KEY), and generated tokens per clock hour (TOKENS_PER_HOUR): over any
is a 429 with Retry-After. And how much a key may store (MAX_STORAGE_BYTES_PER_KEY): past it,
a 413. All off by default."""
import logging
import math
import time

import redis
from flask import current_app, request
from flask_limiter import Limiter

from chatbot.api import auth
from chatbot.api.errors import ApiError
from chatbot.redis_keys import STORED, TOKENS, TOKENS_KEPT
from chatbot.store import usage

log = logging.getLogger(__name__)


def asker():
    """Whose quota a request counts against."""
    return auth.key_name() or request.remote_addr or "local"


class TokenQuota:
    """Generated tokens per asker per clock hour. A request reserves its worst case (its
    num_predict, MAX_NUM_PREDICT when it has none or -1/-2) at admission, refused with a 429
    once the hour's count (what ran, plus what is reserved) has reached TOKENS_PER_HOUR; the
    line settles the real count when the request ends (the reservation back if it never ran).
    So requests sent at once overshoot by at most one reservation. With no limit nothing is
    reserved, and the tokens are counted all the same."""

    def __init__(self, client, per_hour, max_num_predict):
        self.redis, self.per_hour, self.max_num_predict = client, per_hour, max_num_predict

    def worst_case(self, options):
        wanted = (options or {}).get("num_predict")
        if wanted is None or wanted < 0:  # Ollama's -1 (no limit) and -2 (fill the context)
            return self.max_num_predict
        return min(wanted, self.max_num_predict)

    def reserve(self, who, worst):
        """{tally_key, reserved}, the fields a request reserving `worst` tokens carries for the
        line to settle, and `used`: what `who` had used (or reserved) this hour before it; a 429
        if that is this hour's tokens already."""
        hour, now = divmod(time.time(), 3600)
        key = TOKENS.format(who, int(hour))
        if self.per_hour <= 0:
            return {"tally_key": key, "reserved": 0}
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(key, worst)
        pipe.expire(key, TOKENS_KEPT)
        total, _ = pipe.execute()
        if total - worst >= self.per_hour:
            self.release(key, worst)
            raise ApiError(429, f"token limit exceeded: {self.per_hour} generated tokens per "
                                "hour (TOKENS_PER_HOUR)",
                           {"Retry-After": str(max(1, math.ceil(3600 - now)))})
        return {"tally_key": key, "reserved": worst, "used": total - worst}

    def release(self, key, reserved):
        """A reservation given back: its request was never admitted."""
        if reserved:
            try:
                self.redis.decrby(key, reserved)
            except redis.RedisError:  # the error that brought us here is the one to tell
                log.warning("could not give back %d reserved tokens", reserved)


class StorageQuota:
    """MAX_STORAGE_BYTES_PER_KEY: what a key's sessions store (messages, images, summaries,
    documents; chatbot.store.usage). A request that would add to it is refused (413) once the
    key is at its limit, or would pass it with what it brings (an import, a document). The
    count is taken from the database and kept for FRESH seconds, so a key overshoots by at most
    what it writes in that time; a write through the API forgets it at once."""
    FRESH = 10

    def __init__(self, client, limit):
        self.redis, self.limit = client, limit

    def used(self, owner):
        cached = self.redis.get(STORED.format(owner))
        if cached is not None:
            return int(cached)
        used = usage.bytes_used([owner]).get(owner, 0)
        self.redis.set(STORED.format(owner), used, ex=self.FRESH)
        return used

    def check(self, owner, adding=0):
        if self.limit <= 0 or not owner:
            return
        used = self.used(owner)
        if used >= self.limit or used + adding > self.limit:
            raise ApiError(413, f"storage limit reached: key '{owner}' stores {used} bytes"
                                f"{f' and this adds {adding}' if adding else ''}, at most "
                                f"{self.limit} (MAX_STORAGE_BYTES_PER_KEY); delete sessions or "
                                "documents to free space")

    def forget(self, owner):
        if self.limit > 0 and owner:
            self.redis.delete(STORED.format(owner))


def init_app(app):
    """After the API's own before_request (which identifies the key): hooks run in order."""
    rate, overall = app.config["RATE_LIMIT"], app.config["RATE_LIMIT_PER_KEY"]
    # RATE_LIMIT counts each route apart; RATE_LIMIT_PER_KEY all routes together
    app.extensions["rate_limiter"] = Limiter(
        asker, app=app, default_limits=[rate] if rate else [], storage_uri=app.config["REDIS_URL"],
        headers_enabled=True, default_limits_exempt_when=auth.is_open,
        application_limits=[overall] if overall else [],
        application_limits_exempt_when=auth.is_open, enabled=bool(rate or overall),
        key_prefix="chatbot-rate")
    app.extensions["tokens"] = TokenQuota(app.extensions["redis"], app.config["TOKENS_PER_HOUR"],
                                          app.config["MAX_NUM_PREDICT"])
    app.extensions["storage"] = StorageQuota(app.extensions["redis"],
                                             app.config["MAX_STORAGE_BYTES_PER_KEY"])


def tokens():
    return current_app.extensions["tokens"]


def storage():
    return current_app.extensions["storage"]
