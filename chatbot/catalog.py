"""Which models the upstream has, cached briefly so a chat doesn't cost an extra round trip."""
import time

from chatbot.upstream import UpstreamError

TTL_SECONDS = 10.0


class Catalog:
    def __init__(self, upstream):
        self.upstream = upstream
        self.names, self.fetched_at = set(), 0.0

    def _refresh(self):
        models = self.upstream.get_json("/api/tags").get("models") or []
        self.names = {m.get("name") or m.get("model") for m in models}
        self.fetched_at = time.monotonic()

    def require(self, model):
        """Raise the Ollama 404 unless the upstream serves `model` (a fresh look before a 404)."""
        if time.monotonic() - self.fetched_at > TTL_SECONDS or not self._has(model):
            self._refresh()
        if not self._has(model):
            raise UpstreamError(404, f"model '{model}' not found")

    def _has(self, model):
        return model in self.names or (":" not in model and f"{model}:latest" in self.names)
