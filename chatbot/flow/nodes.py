"""The chat flow's nodes up to the upstream call (the call and what follows: flow/reply.py;
summaries: flow/summarize.py), in PocketFlow's cookbook style: reads in `prep`, a pure `exec` (or
one upstream call), writes in `post`, which returns the next action.

Shared store (built by chatbot.worker.tasks):
  job        {request_id, session_id, kind: chat|generate, model, messages: what the session
             gains, upstream: the request's own fields, sent upstream untouched, host, queue,
             fresh: the session was created for this request, owner: the key asking (None
             while keys are off), channel: its SSE channel, asker: who its tokens count
             against}
  marks      {name: time} along the request's path (chatbot.ops.timing; the flow adds each
             node's end)
  running    the request's handle on the line (chatbot.line.running.Running): emit(event) a
             streamed chunk to the waiting client, stop_asked() whether it was cancelled or
             its client is gone, phase(phase, event, data) a step the client may wait on
             (None: it ended), end(reply) ends the request with the reply's outcome, once
  upstream   chatbot.upstream.Upstream for the job's host
  upstream_wait  seconds the upstream call waits for a host that cannot be reached
  windows, calibration, reserve   context-window helpers and settings; calibrations: every
             host's and model's figures, read with the claim (None: read them here)
  metrics    the request's batch of metric writes (chatbot.ops.metrics.Batch), sent once it ends
  started_at when the worker took the request
  attempts   how often the turn found its thread moved on and started over
  tail       (seq, chain) of the stored thread (LoadThread; StoreRequest moves it on); where
             the request branches off it, when it does
  fork       the seq the request branches after (an edit or a regenerate), else None
  system     the thread's leading system messages (LoadThread)
  summarizer {model, max_tokens} when CONTEXT_STRATEGY=summarize, else None
  summary    the thread's newest summary of its dropped history (LoadThread, SummarizeDropped)
  writes     the Connection the turn's writes go through (chatbot.worker.tasks; None: the session)
  titles     what the worker owes new sessions (chatbot.flow.title.Titles), asked when it idles
  span       (first, last) seq of the messages a new summary must cover (BuildContext)
  window, budget, figures   the model's window, our tokens the context may use, and the
             calibration (ratio, overhead) they were sized with (SizeWindow)
  retrieved  the session's document chunks nearest the question (Retrieve, flow/documents.py)
  new, context, sent_tokens, dropped, pure_text, sources   (BuildContext, TakePrompt); sources:
             the chunks the context quotes, named in the reply's final chunk
  reply      {content, thinking, tool_calls, logprobs, final, status, error, chunks} (Call*)
"""
import logging

from pocketflow import Node

from chatbot import store
from chatbot.store import branches
from chatbot.flow.context import (PROMPT_TOO_LONG, TooLong, cost, fit, fit_summarized,
                                  new_messages, reserve_sources, summary_room, with_sources)
from chatbot.flow.window import reply_reserve
from chatbot.tokens import count_tokens

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


class Begin(Node):
    """Chat replays the thread; generate is single-turn (its turns stored, history not sent)."""

    def post(self, shared, prep_res, exec_res):
        shared.setdefault("attempts", 0)
        return shared["job"]["kind"]


class LoadThread(Node):
    """The thread's newest message, leading system messages and summary; and whether the
    request starts a branch (an edit or a regenerate: chatbot.store.branches), in which case
    the thread is read only up to where it branches."""

    def prep(self, shared):
        job = shared["job"]
        if job.get("fresh"):  # a session made for this request has no history to look up
            return ((0, ""), None), [], None
        summary = store.latest_summary(job["session_id"], job["model"]) \
            if shared.get("summarizer") else None
        tail = store.thread_tail(job["session_id"], job["model"])
        return (branches.resend_point(job["session_id"], job["model"], job["messages"], tail,
                                      whole=job.get("branch", False)),
                store.leading_system(job["session_id"], job["model"]), summary)

    def exec(self, prep_res):
        (tail, fork), system, summary = prep_res
        if fork is not None:  # what lies past the branch point is not this turn's history
            system = [m for m in system if m["seq"] <= fork]
            summary = summary if summary and summary["last_seq"] <= fork else None
        return tail, fork, system, summary

    def post(self, shared, prep_res, exec_res):
        shared["tail"], shared["fork"], shared["system"], shared["summary"] = exec_res
        shared["first_turn"] = exec_res[0][0] == 0  # an empty thread: this is its first turn


class SizeWindow(Node):
    """Our-token budget: the window (num_ctx, else the model's own) less the reply's reserve
    and the template's overhead, scaled by how the model's tokenizer compares with ours."""

    def prep(self, shared):
        job, upstream = shared["job"], shared["upstream"]
        options = job["upstream"].get("options") or {}
        figures = shared["calibration"].read(upstream.host, job["model"],
                                             shared.get("calibrations"))
        return shared["windows"], upstream, job["model"], options, shared["reserve"], figures

    def exec(self, prep_res):
        windows, upstream, model, options, reserve, (ratio, overhead) = prep_res
        if not windows.completes(upstream, model):  # Ollama's answer, before any window
            return {"status": 400, "error": f'"{model}" does not support chat'}
        window = options.get("num_ctx") or windows.length(upstream, model)
        return window, int((window - reply_reserve(options, reserve) - overhead) / ratio)

    def post(self, shared, prep_res, exec_res):
        if isinstance(exec_res, dict):
            shared["reply"] = {"status": "failed", "error": exec_res, "final": None, "chunks": 0}
            return "unsupported"
        shared["window"], shared["budget"] = exec_res
        shared["figures"] = prep_res[-1]


class BuildContext(Node):
    def prep(self, shared):
        job, tail, budget = shared["job"], shared["tail"], shared["budget"]
        summary, summarizer = shared.get("summary"), shared.get("summarizer")
        covered = summary["last_seq"] if summary else 0
        stored, used = [], 0  # newest first, as far as the budget could possibly reach
        for message in store.newest_first(job["session_id"], job["model"]) if tail[0] else ():
            if message["seq"] > tail[0]:  # past a branch point: another branch's
                continue
            if message["seq"] <= covered:  # sent as the summary
                break
            stored.append(message)
            used += cost(message)
            if used > budget:
                break
        return (job, tail, shared["system"], budget, stored, summary, summarizer,
                shared.get("retrieved") or [])

    def exec(self, prep_res):
        job, tail, system, budget, stored, summary, summarizer, retrieved = prep_res
        new = [{**m, "tokens": count_tokens(m)} for m in new_messages(tail, job["messages"])]
        if not job["messages"]:  # an empty request only loads the model: send it as it is
            return {"new": [], "context": [], "sent_tokens": 0, "dropped": 0, "pure_text": False}
        sources, hits, budget = reserve_sources(system, new, budget, retrieved)
        try:
            if summarizer:
                context, used, dropped, span = fit_summarized(
                    system, stored, new, budget, tail[0], summary,
                    summary_room(summarizer["max_tokens"]))
            else:
                (context, used, dropped), span = fit(system, stored, new, budget, tail[0]), None
        except TooLong as exc:
            used, budget = exc.args
            return {"error": {"status": 400, "error": (
                f"the request's messages need about {used} tokens but model '{job['model']}' "
                f"has room for about {budget} (context window less the reply's reserve); "
                "send fewer or shorter messages, or raise options.num_ctx")}}
        if dropped and job["upstream"].get("truncate") is False:
            # The client asked for an error rather than a shortened history, as from Ollama.
            return {"error": {"status": 400, "error": PROMPT_TOO_LONG}}
        if sources:  # the chunks go just before the new messages, their tokens counted
            context, used = with_sources(context, sources, new), used + cost(sources)
        pure = not job["upstream"].get("tools") and not any(
            m.get("images") or m.get("tool_calls") for m in context)
        # Nothing new, and the thread ends with a question its reply never reached (a retry
        # after the first was cancelled): this reply is the one to keep.
        unanswered = not new and bool(stored) and stored[0]["role"] != "assistant"
        return {"new": new, "unanswered": unanswered, "context": context, "sent_tokens": used,
                "dropped": dropped,
                "pure_text": pure, "span": span, "sources": [
                    {k: hit[k] for k in ("document", "document_id", "chunk", "score")}
                    for hit in hits]}

    def post(self, shared, prep_res, exec_res):
        if "error" in exec_res:
            shared["reply"] = {"status": "failed", "error": exec_res["error"], "final": None,
                               "chunks": 0}
            return "too_long"
        shared.update(exec_res)
        if exec_res.get("span"):
            first, last = exec_res["span"]
            shared["running"].phase("summarizing", "summarizing", {"first_seq": first, "last_seq": last})
            return "summarize"


class TakePrompt(Node):
    """generate: the session gains the request's system and prompt, as they are."""

    def prep(self, shared):
        return shared["job"]["messages"]

    def exec(self, messages):
        return [{**m, "tokens": count_tokens(m)} for m in messages]

    def post(self, shared, prep_res, exec_res):
        shared.update(new=exec_res, tail=None, dropped=0, sent_tokens=0)


class StoreRequest(Node):
    """The request's new messages, stored before the model is called."""

    def prep(self, shared):
        job = shared["job"]
        return (job["session_id"], job.get("owner"), job["model"], shared["new"],
                job["request_id"], shared["dropped"], shared["tail"], shared.get("writes"),
                shared.get("fork"))

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        session_id, owner, model, new, request_id, dropped, tail, writes, fork = exec_res
        # The turn's reads end here: no transaction stays open while the model talks. (A new
        # session's turn read nothing: no ORM session is made just to be closed.)
        if store.db.session.registry.has():
            store.db.session.close()
        try:
            store.touch_session(session_id, owner, writes)
            if fork is not None:  # the branch's place: the old path's rest steps aside
                branches.fork(session_id, model, fork, writes)
            # Always commits: the session's last use counts even for a load or a pure resend.
            shared["tail"] = store.append_messages(session_id, model, new, request_id,
                                                   truncated=dropped, tail=tail, conn=writes)
        except store.Conflict as exc:
            shared["attempts"] += 1
            if exc.stored or shared["attempts"] >= MAX_ATTEMPTS:
                raise
            log.info("thread moved on before this turn was stored; starting over")
            return "conflict"
        if dropped:
            shared["metrics"].inc("chatbot_context_truncations_total", model=model)
