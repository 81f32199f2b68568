"""How many tokens a model can take: its context window, and how its tokenizer compares with
ours (cl100k), learned from what the upstream reports after each reply."""
import time

from chatbot.upstream import UpstreamError

OLLAMA_DEFAULT_CTX = 2048  # what Ollama assumes when a model says nothing
CACHE_SECONDS = 600
RATIOS = "chatbot:calibration"
SMOOTHING = 0.3  # weight of the newest observation in the running ratio
SUSPECT = 0.6  # the upstream saw under this share of what we expected: it cut the prompt


class Windows:
    """Context length per (host, model) from /api/show, cached in this process."""

    def __init__(self):
        self.cache = {}

    def length(self, upstream, model):
        key = (upstream.host, model)
        hit = self.cache.get(key)
        if hit and time.monotonic() - hit[1] < CACHE_SECONDS:
            return hit[0]
        try:
            info = upstream.post_json("/api/show", {"model": model}).get("model_info") or {}
        except UpstreamError:
            return OLLAMA_DEFAULT_CTX  # the chat itself will report the upstream's error
        length = next((int(v) for k, v in info.items() if k.endswith(".context_length")),
                      OLLAMA_DEFAULT_CTX)
        self.cache[key] = (length, time.monotonic())
        return length


class Calibration:
    """Upstream tokens per cl100k token, per host and model, shared through Redis."""

    def __init__(self, client):
        self.redis = client

    def ratio(self, host, model):
        value = self.redis.hget(RATIOS, f"{host}|{model}")
        return float(value) if value else 1.0

    def observe(self, host, model, sent, seen):
        """Fold in one reply: we sent `sent` of our tokens, the upstream evaluated `seen`.
        Returns False (and learns nothing) when the upstream evidently truncated."""
        if not sent or not seen:
            return True
        known = self.redis.hget(RATIOS, f"{host}|{model}")
        current, observed = float(known or 1.0), seen / sent
        if observed < current * SUSPECT:
            return False
        updated = current + SMOOTHING * (observed - current) if known else observed
        self.redis.hset(RATIOS, f"{host}|{model}", updated)
        return True


def reply_reserve(options, default):
    predict = (options or {}).get("num_predict")
    return predict if isinstance(predict, int) and predict > 0 else default
