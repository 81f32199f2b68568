"""AUTO_TITLES: after a session's first reply, the worker asks the model for a short title,
stored unless the session has one (a user's title is never replaced), and told to the
request's SSE listeners (`title`). Only while nobody waits in line: the flow owes the title
(NameSession), and the worker asks the titles it owes when nobody came for a while (a linger
found nobody: Titles.ask, from chatbot.worker.tasks), each streamed and given up at the next
token once a request waits. So a client that sends its next request as soon as it has a reply never waits
behind a title (shared store: see chatbot.flow.nodes; `titles` is the worker's Titles)."""
import collections
import logging

from pocketflow import Node

from chatbot import store
from chatbot.upstream import UpstreamError, collect

log = logging.getLogger(__name__)
ASK = ("Write a short title, at most six words, for the conversation below. Write only the "
       "title, without quotes.")
MAX_TOKENS = 16
MAX_CHARS = 60
SHOWN = 300  # characters of the question and of the reply the title is asked from: a short
# prompt, since a request that comes meanwhile waits for its evaluation
MAX_OWED = 64  # titles a worker owes at most; under load the oldest are given up


class NameSession(Node):
    """A session's first reply is done: the worker owes it a title."""

    def prep(self, shared):
        job, reply = shared["job"], shared.get("reply") or {}
        if not (shared.get("auto_titles") and shared.get("first_turn") and job["kind"] == "chat"
                and reply.get("status") == "ok" and reply.get("final")):
            return None
        question = next((m.get("content") for m in job["messages"] if m.get("role") == "user"), "")
        options = {k: v for k, v in (job["upstream"].get("options") or {}).items()
                   if k == "num_ctx"}
        body = {"model": job["model"], "options": {**options, "temperature": 0,
                                                   "num_predict": MAX_TOKENS},
                "messages": [{"role": "system", "content": ASK}, {"role": "user", "content":
                             f"User: {question[:SHOWN]}\n\nAssistant: {reply['content'][:SHOWN]}"}]}
        return {"session_id": job["session_id"], "fresh": bool(job.get("fresh")),
                "upstream": shared["upstream"], "channel": shared["running"].channel,
                "body": body}

    def post(self, shared, prep_res, exec_res):
        if prep_res is not None:
            shared["titles"].owe(prep_res)


class Titles:
    """The titles a worker owes, asked when it would otherwise idle."""

    def __init__(self, most=MAX_OWED):
        self.owed = collections.deque(maxlen=most)

    def owe(self, title):
        self.owed.append(title)

    def ask(self, line, queue, conn=None):
        """Ask the owed titles, oldest first, while nobody waits in `queue`'s line; store each
        (through `conn`, the worker's Connection) and tell its request's SSE listeners."""
        stop = lambda: line.waiting(queue) > 0  # noqa: E731
        while self.owed and not stop():
            title = self.owed.popleft()
            if not title["fresh"] and store.session_title(title["session_id"]) is not None:
                continue  # named already (an imported session, or its user named it)
            try:  # None: someone came to wait, first
                said = collect(title["upstream"], "/api/chat", title["body"], stop)
            except UpstreamError as exc:
                log.info("no title: %s", exc.error)
                continue
            named = said and cleaned(said["content"])
            if named and store.set_title_if_unset(title["session_id"], named, conn):
                line.notice(title["channel"], "title",
                            {"session_id": title["session_id"], "title": named})


def cleaned(text):
    """The title's first line, without quotes, markup or a closing period; at most MAX_CHARS."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    marks = "\"'*#` "
    line = line.strip(marks)
    if line.lower().startswith("title:"):
        line = line[len("title:"):]
    line = line.strip(marks).rstrip(".")
    return line if len(line) <= MAX_CHARS else line[:MAX_CHARS - 1].rstrip() + "…"
