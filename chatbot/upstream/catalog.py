"""Which models an upstream has, cached briefly so a chat doesn't cost an extra round trip.
A host that does not answer is skipped for a few seconds rather than asked on every request."""
import threading
import time

from chatbot.upstream import UpstreamError

TTL_SECONDS = 10.0
DOWN_SECONDS = 3.0


class Catalog:
    def __init__(self, upstream):
        self.upstream = upstream
        self.names, self.fetched_at = set(), 0.0
        self.down_until, self.down_error = 0.0, None
        self.lock = threading.Lock()  # one refresh at a time, however many requests ask

    def _refresh(self):
        if time.monotonic() < self.down_until:
            raise self.down_error
        try:
            models = self.upstream.get_json("/api/tags").get("models") or []
        except UpstreamError as exc:
            self.down_until, self.down_error = time.monotonic() + DOWN_SECONDS, exc
            raise
        self.names = {m.get("name") or m.get("model") for m in models}
        self.fetched_at = time.monotonic()

    def has(self, model):
        """Whether the upstream serves `model` (looking again before saying no)."""
        if time.monotonic() - self.fetched_at > TTL_SECONDS or not self._known(model):
            asked = time.monotonic()
            with self.lock:
                if self.fetched_at < asked:  # nobody refreshed while this request waited
                    self._refresh()
        return self._known(model)

    def _known(self, model):
        return model in self.names or full_name(model) in self.names


def full_name(model):
    """A model's name as Ollama lists it ("llama3" is "llama3:latest")."""
    return model if ":" in model else f"{model}:latest"


class Answers:
    """The upstream's answers about its models (listings, /api/show), kept `ttl` seconds in
    this process: clients ask them on every page or start (Open WebUI, the CLI), and they must
    not cost the model's host a round trip each. At most `size` answers; forgotten whole when
    a model is pulled, created, copied or deleted through this process."""

    def __init__(self, ttl, size=256):
        self.ttl, self.size, self.kept, self.lock = ttl, size, {}, threading.Lock()

    def get(self, key, fetch):
        now = time.monotonic()
        with self.lock:
            hit = self.kept.get(key)
        if hit and hit[0] > now:
            return hit[1]
        answer = fetch()
        if self.ttl > 0:
            with self.lock:
                if len(self.kept) >= self.size:
                    self.kept = {k: v for k, v in self.kept.items() if v[0] > now}
                if len(self.kept) < self.size:
                    self.kept[key] = (now + self.ttl, answer)
        return answer

    def forget(self):
        with self.lock:
            self.kept = {}
