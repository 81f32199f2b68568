"""AUTO_TITLES: after a session's first reply, the worker asks the model for a short title,
stored unless the session has one (a user's title is never replaced), and told to the
request's SSE listeners (`title`). Only while nobody waits in line: it is asked after the
reply has ended, streamed, and given up at the next token once another request waits
(shared store: see chatbot.flow.nodes)."""
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


class NameSession(Node):
    def prep(self, shared):
        job, reply, running = shared["job"], shared.get("reply") or {}, shared["running"]
        if not (shared.get("auto_titles") and shared.get("first_turn") and job["kind"] == "chat"
                and reply.get("status") == "ok" and reply.get("final")):
            return None
        # Its ending said how many wait (none: a round trip to ask); a session made for this
        # request has no title yet (and the title is only ever set if it still has none).
        waiting = running.waiting if running.waiting is not None else others_wait(running)
        if waiting or (not job.get("fresh") and store.session_title(job["session_id"]) is not None):
            return None
        question = next((m.get("content") for m in job["messages"] if m.get("role") == "user"), "")
        options = {k: v for k, v in (job["upstream"].get("options") or {}).items()
                   if k == "num_ctx"}
        body = {"model": job["model"], "options": {**options, "temperature": 0,
                                                   "num_predict": MAX_TOKENS},
                "messages": [{"role": "system", "content": ASK}, {"role": "user", "content":
                             f"User: {question[:SHOWN]}\n\nAssistant: {reply['content'][:SHOWN]}"}]}
        return shared["upstream"], body, lambda: others_wait(running)

    def exec(self, prep_res):
        if prep_res is None:
            return None
        upstream, body, stop = prep_res
        try:
            said = collect(upstream, "/api/chat", body, stop)  # None: someone waits, first
        except UpstreamError as exc:
            log.info("no title: %s", exc.error)
            return None
        return said and cleaned(said["content"])

    def post(self, shared, prep_res, exec_res):
        if exec_res and store.set_title_if_unset(shared["job"]["session_id"], exec_res,
                                                 shared.get("writes")):
            shared["running"].notice("title", {"session_id": shared["job"]["session_id"],
                                               "title": exec_res})


def others_wait(running):
    return running.line.waiting(running.queue) > 0


def cleaned(text):
    """The title's first line, without quotes, markup or a closing period; at most MAX_CHARS."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    marks = "\"'*#` "
    line = line.strip(marks)
    if line.lower().startswith("title:"):
        line = line[len("title:"):]
    line = line.strip(marks).rstrip(".")
    return line if len(line) <= MAX_CHARS else line[:MAX_CHARS - 1].rstrip() + "…"
