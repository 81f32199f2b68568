"""CONTEXT_STRATEGY=summarize: the node that sums up the history a context had to leave out
(shared store: see chatbot.flow.nodes)."""
import logging

from pocketflow import Node

from chatbot import store
from chatbot.flow.context import cost, summary_message, summary_request
from chatbot.flow.reply import new_reply
from chatbot.upstream import UpstreamError, collect

log = logging.getLogger(__name__)


class SummarizeDropped(Node):
    """CONTEXT_STRATEGY=summarize, when BuildContext left out messages no summary covers: one
    call for a short summary of them (extending the previous summary), stored and sent in
    place of the plain note. Any failure keeps the note. It is part of its asker's turn, so it
    obeys what the turn does: streamed, it stops at the next token when the request is
    cancelled or past MAX_REQUEST_SECONDS, and the turn ends there with nothing stored."""

    def prep(self, shared):
        job, summarizer, summary = shared["job"], shared["summarizer"], shared.get("summary")
        first, last = shared["span"]
        skip = {m["seq"] for m in shared["system"]}
        messages = store.span_messages(job["session_id"], job["model"], first, last, skip)
        options = job["upstream"].get("options") or {}
        return (shared["upstream"], summarizer["model"] or job["model"], summary, messages,
                summarizer["max_tokens"], options, shared["budget"], shared["running"].stop_asked)

    def exec(self, prep_res):
        upstream, model, summary, messages, max_tokens, options, budget, stop = prep_res
        body, shown = summary_request(model, summary and summary["content"], messages,
                                      max_tokens, options, budget)
        if not shown:
            return {"error": "none of the messages to summarize fits a request"}
        try:
            reply = collect(upstream, "/api/chat", body, stop)
            if reply is None:
                return {"stopped": True}
        except (UpstreamError, ValueError, AttributeError) as exc:
            return {"error": getattr(exc, "error", str(exc))}
        text = reply["content"].strip()
        if not text:
            return {"error": "the summary came back empty"}
        return {"text": text, "left_out": len(messages) - shown}

    def post(self, shared, prep_res, exec_res):
        job, (first, last), summary = shared["job"], shared["span"], shared.get("summary")
        model = job["model"]
        if exec_res.get("stopped"):  # cancelled or overdue: the turn ends, nothing stored
            shared["running"].phase(None, "summarized", {"ok": False})
            overdue = shared["running"].overdue_error()
            shared["reply"] = {**new_reply(), "error": overdue,
                               "status": "failed" if overdue else "cancelled"}
            return "stopped"
        if "error" in exec_res:
            log.warning("summary of messages %d-%d failed, the note stays: %s", first, last,
                        exec_res["error"])
            shared["metrics"].inc("chatbot_context_summaries_total", model=model, outcome="failed")
            shared["running"].phase(None, "summarized", {"ok": False})
            return
        if exec_res["left_out"]:
            log.info("summary: %d older messages of the span did not fit the request",
                     exec_res["left_out"])
        message = summary_message(exec_res["text"], shared["summarizer"]["max_tokens"])
        made = store.save_summary(job["session_id"], model,
                                  summary["first_seq"] if summary else first, last,
                                  message["content"], message["tokens"],
                                  summary and summary["id"], job["request_id"])
        at = len(shared["system"])  # the note's place, which the summary takes
        shared["sent_tokens"] += cost(message) - cost(shared["context"][at])
        shared["context"][at] = message
        shared["summary"] = made
        shared["metrics"].inc("chatbot_context_summaries_total", model=model, outcome="ok")
        shared["running"].phase(None, "summarized", {"ok": True, "first_seq": made["first_seq"],
                                             "last_seq": last})

