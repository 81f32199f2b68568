"""Which Ollama host serves a request: one that has the model, shortest queue first; a session
sticks to the host that served it while that host is healthy (its KV cache is warm).

Each host has its own Celery queue, consumed by its own concurrency-1 worker.
"""
from flask import current_app

from chatbot.upstream.catalog import Catalog
from chatbot.redis_keys import STICKY
from chatbot.upstream import Upstream, UpstreamError

STICKY_TTL = 24 * 3600


def queue_name(index, count):
    return "ollama" if count == 1 else f"ollama-{index + 1}"


class Router:
    def __init__(self, hosts, connect_timeout, read_timeout, client, line, retries=2):
        """`client` the Redis pool (sticky sessions), `line` for the queues' lengths."""
        self.hosts = hosts
        self.queues = {h: queue_name(i, len(hosts)) for i, h in enumerate(hosts)}
        self.settings = (connect_timeout, read_timeout, retries)
        self.upstreams = {h: Upstream(h, *self.settings) for h in hosts}
        self.catalogs = {h: Catalog(self.upstreams[h]) for h in hosts}
        self.redis, self.line = client, line

    def upstream(self, host=None):
        host = host or self.hosts[0]
        if host not in self.upstreams:  # a worker may be told of a host its config lacks
            self.upstreams[host] = Upstream(host, *self.settings)
        return self.upstreams[host]

    def candidates(self, model):
        """The hosts that have `model`, or the Ollama error: 404 no host has it, 503 no host
        answers."""
        found, errors = [], []
        for host in self.hosts:
            try:
                if self.catalogs[host].has(model):
                    found.append(host)
            except UpstreamError as exc:
                errors.append(exc)
        if not found:
            if errors and len(errors) == len(self.hosts):
                raise errors[0]
            raise UpstreamError(404, f"model '{model}' not found")
        return found

    def merged(self, path, listings=None):
        """`models` of /api/tags or /api/ps from every host that answers, one entry a name
        (`listings`: the hosts' as `listings(path)` read them)."""
        models = {}
        for entries in (listings or self.listings(path)).values():
            for entry in entries:
                models.setdefault(entry.get("name") or entry.get("model"), entry)
        return {"models": list(models.values())}

    def listings(self, path):
        """{host: its `models` of /api/tags or /api/ps} for every host that answers."""
        found, errors = {}, []
        for host in self.hosts:
            try:
                found[host] = self.upstreams[host].get_json(path).get("models") or []
            except UpstreamError as exc:
                errors.append(exc)
        if len(errors) == len(self.hosts):
            raise errors[0]
        return found

    def choose(self, model, session_id):
        """(host, queue) for a request: a host that has the model, the session's own while it
        answers, else the one with the shortest queue."""
        candidates = self.candidates(model)
        if len(self.hosts) == 1:  # nothing to choose: spare the round trips
            return candidates[0], self.queues[candidates[0]]
        if session_id is None:  # no session to stick to: the shortest queue
            host = min(candidates, key=lambda h: self.line.load(self.queues[h]))
            return host, self.queues[host]
        sticky = self.redis.get(STICKY.format(session_id))
        host = sticky.decode() if sticky and sticky.decode() in candidates else None
        if host is None:
            host = min(candidates, key=lambda h: self.line.load(self.queues[h]))
            self.redis.set(STICKY.format(session_id), host, ex=STICKY_TTL)
        return host, self.queues[host]


def get():
    return current_app.extensions["router"]
