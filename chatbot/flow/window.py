"""How many tokens a model can take: its context window, and how its tokenizer compares with
ours (cl100k), learned from what the upstream reports after each reply."""
import json
import time

from chatbot.upstream import UpstreamError
from chatbot.redis_keys import CALIBRATION as RATIOS

OLLAMA_DEFAULT_CTX = 2048  # what Ollama assumes when a model says nothing
CACHE_SECONDS = 600
SMOOTHING = 0.3  # weight of the newest observation in the running figures
SUSPECT = 0.6  # the upstream saw under this share of what we expected: a cache hit, or a cut
BAND = (0.5, 2.5)  # a tokenizer's tokens per cl100k token stay within this
MAX_OVERHEAD = 256  # tokens a chat template adds on its own (system prompt, markers)
MIN_SENT = 64  # shorter prompts say more about the template than about the tokenizer
class Windows:
    """Context length and capabilities per (host, model) from /api/show, cached in this
    process."""

    def __init__(self):
        self.cache = {}
        # The window a model is loaded with when a request names no num_ctx, as /api/ps told
        # it after the upstream refused a context sized to the model's trained length (Ollama
        # loads models with OLLAMA_CONTEXT_LENGTH, 4k to 256k by VRAM, not the trained one).
        self.default = {}

    def _about(self, upstream, model):
        key = (upstream.host, model)
        hit = self.cache.get(key)
        if hit and time.monotonic() - hit[1] < CACHE_SECONDS:
            return hit[0]
        try:
            show = upstream.post_json("/api/show", {"model": model})
        except UpstreamError:
            return OLLAMA_DEFAULT_CTX, None  # the chat itself will report the upstream's error
        info = show.get("model_info") or {}
        length = next((int(v) for k, v in info.items() if k.endswith(".context_length")),
                      OLLAMA_DEFAULT_CTX)
        about = (length, show.get("capabilities"))
        self.cache[key] = (about, time.monotonic())
        return about

    def length(self, upstream, model):
        return self.default.get((upstream.host, model)) or self._about(upstream, model)[0]

    def learn_default(self, upstream, model):
        """The window the upstream has loaded `model` with (its /api/ps context_length),
        kept as the model's window from now on; None when it does not say."""
        try:
            loaded = upstream.get_json("/api/ps").get("models") or []
        except (UpstreamError, ValueError, AttributeError):
            return None
        length = next((m.get("context_length") for m in loaded if isinstance(m, dict)
                       and model in (m.get("model"), m.get("name"))), None)
        if isinstance(length, int) and length > 0:
            self.default[(upstream.host, model)] = length
            return length
        return None

    def completes(self, upstream, model):
        """False only when the upstream lists the model's capabilities without "completion"
        (an embedding model such as all-minilm); older Ollamas list none."""
        capabilities = self._about(upstream, model)[1]
        return not isinstance(capabilities, list) or "completion" in capabilities


class Calibration:
    """How a model's tokenizer compares with ours, per host and model, shared through Redis:
    `ratio` upstream tokens per cl100k token, plus the template's fixed `overhead`."""

    def __init__(self, client):
        self.redis = client

    def read(self, host, model, known=None):
        """(ratio, overhead): (1.0, 0) until learned. `known`: every host's and model's as
        read by Fetched, in another round trip."""
        if known is None:
            raw = self.redis.hget(RATIOS, f"{host}|{model}")
        else:
            raw = known.get(f"{host}|{model}".encode())
        try:
            figures = json.loads(raw) if raw else {}
            return float(figures["ratio"]), float(figures["overhead"])
        except (ValueError, TypeError, KeyError):  # unknown, or an older format: start afresh
            return 1.0, 0.0

    def write(self, host, model, figures, pipe=None):
        """Store the figures now, or in `pipe` (a request's batch of writes)."""
        ratio, overhead = figures
        (pipe or self.redis).hset(RATIOS, f"{host}|{model}",
                                  json.dumps({"ratio": ratio, "overhead": overhead}))


class Fetched:
    """Every calibration, read in a round trip of the caller's (Line.claim_next's `also`): the
    worker reads them with its claim instead of on its own."""

    def __init__(self):
        self.known = None

    def queue(self, pipe):
        pipe.hgetall(RATIOS)

    def take(self, results):
        self.known = results[0]


def learn(known, sent, seen, window, pure_text):
    """Fold one reply into (ratio, overhead): we sent `sent` of our tokens, the upstream
    evaluated `seen`. Returns (new figures or None, whether the upstream cut the prompt).

    A reading below what any sane tokenizer gives (a prompt cache hit) teaches nothing; short
    prompts teach the template's overhead, long pure-text ones the ratio; both move by a fraction of each reading and stay in their band, so one odd
    reading cannot shrink every user's window, and later normal readings bring them back. A
    cut is flagged only when the upstream saw far less than expected while filling most of
    its window."""
    if not sent or not seen:
        return None, False
    ratio, overhead = known
    if seen < (overhead + ratio * sent) * SUSPECT and seen >= window * 0.5:
        return None, True
    if seen < sent * BAND[0] * SUSPECT:  # less than any sane tokenizer: a prompt cache hit
        return None, False
    if sent < MIN_SENT:  # the template's own tokens dominate a short prompt
        overhead += SMOOTHING * (_clamp(seen - ratio * sent, 0, MAX_OVERHEAD) - overhead)
    elif pure_text:
        ratio += SMOOTHING * (_clamp((seen - overhead) / sent, *BAND) - ratio)
    return (round(ratio, 4), round(overhead, 2)), False


def _clamp(value, low, high):
    return max(low, min(high, value))


def reply_reserve(options, default):
    predict = (options or {}).get("num_predict")
    return predict if isinstance(predict, int) and predict > 0 else default
