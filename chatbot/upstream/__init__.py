"""The one place that talks HTTP to an Ollama host."""
import json
import logging
import time
import uuid

import requests
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

log = logging.getLogger(__name__)
WAIT_BACKOFF = (0.1, 1.0)  # a turn waiting for its upstream tries again: 0.1 s, doubling to 1 s


class UpstreamError(Exception):
    """An Ollama-style error: the status to answer with and the message; `refused`: the host
    could not be reached (refused, or dropped before answering), nothing of it began."""

    def __init__(self, status, error, refused=False):
        super().__init__(error)
        self.status, self.error, self.refused = status, error, refused


def _unreachable(status, what, host, detail="", refused=False):
    """An error about reaching a host: the client gets what went wrong and an error id, the
    log the host and the details (a client never learns our topology)."""
    error_id = uuid.uuid4().hex[:12]
    log.warning("%s: ollama at %s %s", what, host, detail, extra={"error_id": error_id})
    return UpstreamError(status, f"{what} (error id {error_id})", refused)


class Upstream:
    def __init__(self, host, connect_timeout=2.0, read_timeout=300.0, retries=2, backoff=0.1):
        self.host = host
        self.timeout = (connect_timeout, read_timeout)
        self.retries, self.backoff = retries, backoff
        # The environment's proxy settings for this host, read once: a Session would scan
        # the whole environment (and ~/.netrc) on every call.
        self.proxies = requests.utils.get_environ_proxies(host)
        self.headers = requests.utils.default_headers()
        # Calls go straight to requests' adapter: a Session's cookies, hooks, redirects and
        # settings merging mean nothing to Ollama's API and cost a fifth of a call.
        # Connections kept for reuse: as many as requests a web process passes through at once.
        self.adapter = requests.adapters.HTTPAdapter(pool_maxsize=64)
        self.adapter.poolmanager.pool_classes_by_scheme = {
            **self.adapter.poolmanager.pool_classes_by_scheme, "http": _OneWritePool}
        # (method, path) -> its request with URL and headers made once (a third of the cost
        # of preparing one); a few dozen paths at most (blobs' paths vary: not kept).
        self.prepared = {}

    def _prepare(self, method, path, json, data):
        base = self.prepared.get((method, path))
        if base is None:
            base = requests.PreparedRequest()
            base.prepare(method=method, url=self.host + path, headers=self.headers)
            if len(self.prepared) < 64:
                self.prepared[method, path] = base
        prepared = base.copy()
        prepared.prepare_body(data, None, json)
        return prepared

    def request(self, method, path, json=None, data=None, stream=False, retries=None):
        """One call; a refused or dropped connection is retried with backoff (a restarting
        Ollama), but only before any byte of the answer: never once a stream has begun.
        A connect timeout is not retried, so an unreachable host costs one timeout."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                resp = self.adapter.send(self._prepare(method, path, json, data), stream=stream,
                                         timeout=self.timeout, proxies=self.proxies)
                if not stream:
                    resp.content  # noqa: B018  read whole, as a Session would
                break
            except requests.ConnectTimeout:
                raise _unreachable(503, "could not connect to ollama", self.host, "timed out")
            except requests.ConnectionError as exc:
                if attempt == retries or not _replayable(data):
                    raise _unreachable(503, "could not connect to ollama", self.host,
                                       _reason(exc), refused=True)
                time.sleep(self.backoff * 2 ** attempt)
            except requests.Timeout:
                raise _unreachable(503, "ollama did not answer in time", self.host)
        if resp.status_code >= 400:
            error = _error_text(resp)
            resp.close()
            raise UpstreamError(resp.status_code, error)
        return resp

    def get_json(self, path):
        return self.request("GET", path).json()

    def post_json(self, path, body):
        return self.request("POST", path, json=body).json()

    def waiting(self, method, path, json, seconds, stop):
        """request() for a worker's turn, which keeps its place while its upstream restarts:
        a host that cannot be reached (refused, or dropped before answering) is tried again,
        after 0.1 s doubling to 1 s, for up to `seconds`, then its error is raised. None if
        `stop()` (the request cancelled, its client gone) says to give up meanwhile. The web's
        own calls never wait: a client waiting on them would hang."""
        deadline, delay = time.monotonic() + seconds, WAIT_BACKOFF[0]
        while True:
            try:
                return self.request(method, path, json=json, stream=True, retries=0)
            except UpstreamError as exc:
                if not exc.refused or time.monotonic() + delay > deadline:
                    raise
            until = time.monotonic() + delay
            while time.monotonic() < until:
                if stop():
                    return None
                time.sleep(min(0.05, delay))
            delay = min(delay * 2, WAIT_BACKOFF[1])

    def stream(self, path, body, wait=None):
        """Yield (raw line, parsed chunk) as the upstream sends them; closing stops the upstream.
        `wait` (seconds, stop): a worker's turn, which waits for an unreachable upstream (see
        waiting), and yields nothing if stopped meanwhile."""
        body = {**body, "stream": True}
        resp = self.waiting("POST", path, body, *wait) if wait else \
            self.request("POST", path, json=body, stream=True)
        if resp is None:
            return
        try:
            lines = resp.iter_lines(chunk_size=None)
            for line in lines:
                if line:
                    chunk = json.loads(line)
                    if chunk.get("done"):
                        _finish_body(resp, lines)
                    yield line, chunk
        except requests.RequestException as exc:
            raise _unreachable(502, "ollama broke off the reply", self.host, _reason(exc))
        finally:
            resp.close()  # a body read to its end puts the connection back in the pool


class _OneWriteConnection(HTTPConnection):
    """urllib3 writes a request's headers, then its body: two segments, so the upstream wakes
    and reads twice. A body held in memory anyway goes out with the headers, in one write (as
    http.client itself sends one); a streamed body (an upload passed through) as before."""

    held = None

    def request(self, method, url, body=None, *args, **kwargs):
        if body is not None and not isinstance(body, (bytes, str)):
            return super().request(method, url, body, *args, **kwargs)
        self.held = []
        try:
            super().request(method, url, body, *args, **kwargs)
        finally:
            held, self.held = self.held, None
        super().send(b"".join(held))

    def send(self, data):
        if self.held is None:
            return super().send(data)
        self.held.append(data)


class _OneWritePool(HTTPConnectionPool):
    ConnectionCls = _OneWriteConnection


def collect(upstream, path, body, stop):
    """A streamed call's whole reply (REPLY_FIELDS, see fold), or None once `stop()` says so
    between chunks (closing the stream stops the upstream). An error chunk raises
    UpstreamError."""
    reply = empty_reply()
    for _, chunk in upstream.stream(path, body):
        if "error" in chunk:
            raise UpstreamError(500, chunk["error"])
        fold(reply, chunk)
        if chunk.get("done"):
            return reply
        if stop():
            return None
    return reply


def _finish_body(resp, lines, wait=1.0):
    """Read what follows the final chunk (only the body's end, from Ollama), so that the
    connection is kept for the next call instead of closed: a new connection per reply costs
    the worker a connect and Ollama a new handler. An upstream that sends more, or holds the
    body open past `wait` s, just loses its connection."""
    try:
        resp.raw.connection.sock.settimeout(wait)  # the pool sets its own on the next call
        for _ in lines:
            pass
    except (AttributeError, OSError, requests.RequestException):
        pass


REPLY_FIELDS = ("content", "thinking", "tool_calls", "logprobs")


def empty_reply():
    """What a reply is made of, before its first chunk (see fold)."""
    return {"content": "", "thinking": "", "tool_calls": [], "logprobs": []}


def fold(reply, chunk):
    """Add one streamed chunk (chat's or generate's) to `reply` (REPLY_FIELDS)."""
    message = chunk.get("message") or chunk  # generate's chunk is its own message
    reply["content"] += message.get("content") or message.get("response") or ""
    reply["thinking"] += message.get("thinking") or ""
    reply["tool_calls"] += message.get("tool_calls") or []
    reply["logprobs"] += chunk.get("logprobs") or []  # beside the message, not in it
    return reply


def _replayable(data):
    """A streamed upload (blobs) cannot be sent twice."""
    return data is None or isinstance(data, (bytes, str))


def _error_text(resp):
    try:
        return resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return resp.text.strip() or f"upstream answered {resp.status_code}"


def _reason(exc):
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text[:200]
