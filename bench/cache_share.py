"""The bundled engine's prompt-cache counters, attributed to the requests that moved them.

The engine reports prompt tokens reused and evaluated only as totals (/metrics; Ollama's
final chunk has no such field: its prompt_eval_count is the whole prompt, cached or not). It
runs one request at a time, and a request moves the counters once, as it starts (after its
model is loaded, before its first token). So a thread reads /metrics every `every` seconds
while a trace runs, and each change is put down to the request that started last before
the change was read (`started_at`, from the line). A request would have to start and end
within one reading for its change to be put down to the next: these runs take 0.3 s or
more. What was read before any request started is reported as unattributed.
"""
import threading
import time

import requests

COUNTERS = ("reused", "evaluated")


def read(url):
    text = requests.get(url + "/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        for name in COUNTERS:
            if line.startswith(f"chatbot_engine_prompt_cache_{name}_tokens_total "):
                found[name] = float(line.split()[1])
    return found


class Watch:
    def __init__(self, url, every=0.05):
        self.url, self.every = url, every
        self.samples = []  # (time read, {counter: value})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.samples.append((time.time(), read(self.url)))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), read(self.url)))

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                self.samples.append((time.time(), read(self.url)))
            except requests.RequestException:
                continue

    def attribute(self, rows):
        """Adds `reused` and `evaluated` to each row that started; returns what no row can
        take ({counter: tokens})."""
        started = sorted((r for r in rows if r.get("started_at")), key=lambda r: r["started_at"])
        for row in started:
            row.update(reused=0.0, evaluated=0.0)
        left = dict.fromkeys(COUNTERS, 0.0)
        for (_, before), (at, after) in zip(self.samples, self.samples[1:]):
            owner = None
            for row in started:
                if row["started_at"] > at:
                    break
                owner = row
            for name in COUNTERS:
                delta = after[name] - before[name]
                if owner is None:
                    left[name] += delta
                else:
                    owner[name] += delta
        return left


def share(rows):
    """Prompt tokens reused / (reused + evaluated) over `rows` (attributed), or nan."""
    reused = sum(r.get("reused", 0) for r in rows)
    total = reused + sum(r.get("evaluated", 0) for r in rows)
    return reused / total if total else float("nan")
