"""Which models each host has loaded, and keeping some loaded ahead of their requests.

- `queued_loads`: the models that requests wait in a host's line for while that host has not
  loaded them (each will cost its request a load); GET /api/ps adds them as `queued`.
- `keep_loaded`: PRELOAD_MODELS and PINNED_MODELS loaded when the maintenance worker starts,
  and PINNED_MODELS loaded again by each sweep when their host has dropped them (it
  restarted, or unloaded them for another model). A load is asked only of a host whose line
  is empty, so it never goes ahead of a request; a request that comes while it loads waits
  for the load, as it would on Ollama.
"""
import logging

from chatbot.upstream import UpstreamError
from chatbot.upstream.catalog import full_name

log = logging.getLogger(__name__)


def names(models):
    """The full names of /api/ps's (or /api/tags') `models`."""
    return {full_name(m.get("name") or m.get("model") or "") for m in models}


def waiting_models(line, queue):
    """{model: requests waiting for it} in `queue`'s line (the running one is not waiting)."""
    counts = {}
    for entry in line.snapshot(queue)["waiting"]:
        if entry["model"]:
            name = full_name(entry["model"])
            counts[name] = counts.get(name, 0) + 1
    return counts


def queued_loads(waiting, loaded_by_host):
    """[{name, model, requests}] for the models requests wait for on a host that has not
    loaded them (a host that did not answer has loaded nothing); both arguments by host."""
    wanted = {}
    for host, counts in waiting.items():
        for model, count in counts.items():
            if model not in loaded_by_host.get(host, set()):
                wanted[model] = wanted.get(model, 0) + count
    return [{"name": m, "model": m, "requests": n} for m, n in sorted(wanted.items())]


def load(upstream, model, keep_alive):
    """Ollama's load request: a generate with no prompt, or for an embedding model an embed
    of no input (generate refuses it)."""
    body = {"model": model, **({} if keep_alive is None else {"keep_alive": keep_alive})}
    capabilities = upstream.post_json("/api/show", {"model": model}).get("capabilities") or []
    if "embedding" in capabilities and "completion" not in capabilities:
        upstream.request("POST", "/api/embed", json={**body, "input": []})
    else:
        upstream.request("POST", "/api/generate", json=body)


def keep_loaded(router, models, keep_alive):
    """Ask each idle host that has one of `models` unloaded to load it (Ollama's load request:
    a generate with no prompt); `keep_alive(model)` is what the load asks for. Returns the
    (host, model) pairs asked."""
    asked = []
    for host, queue in router.queues.items():
        if router.line.load(queue):
            continue  # its line is busy: never ahead of a request
        upstream = router.upstream(host)
        try:
            present = names(upstream.get_json("/api/ps").get("models") or [])
            for model in sorted(models):
                if full_name(model) in present or not router.catalogs[host].has(model):
                    continue
                load(upstream, model, keep_alive(model))
                asked.append((host, model))
                log.info("loaded %s on %s ahead of its requests", model, host)
        except UpstreamError as exc:
            log.warning("could not keep models loaded on %s: %s", host, exc)
    return asked
