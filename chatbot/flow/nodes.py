"""The chat flow's nodes, in PocketFlow's cookbook style: reads in `prep`, a pure `exec` (or
one upstream call), writes in `post`, which returns the next action.

Shared store (built by chatbot.tasks):
  job        {request_id, session_id, kind: chat|generate, model, messages: what the session
             gains, upstream: the request's own fields, sent upstream untouched, host, queue,
             fresh: the session was created for this request, owner: the key asking (None
             while keys are off), channel: its SSE channel, asker: who its tokens count
             against}
  marks      {name: time} along the request's path (chatbot.timing; the flow adds each
             node's end)
  emit       callable(event): a streamed chunk, to the waiting client
  stop       callable() -> bool: the request was cancelled or its client is gone
  end        callable(reply): asks the line to end the request with the reply's outcome
  upstream   chatbot.upstream.Upstream for the job's host
  upstream_wait  seconds the upstream call waits for a host that cannot be reached
  windows, calibration, reserve   context-window helpers and settings; calibrations: every
             host's and model's figures, read with the claim (None: read them here)
  metrics    the request's batch of metric writes (chatbot.metrics.Batch), sent once it ends
  started_at when the worker took the request
  attempts   how often the turn found its thread moved on and started over
  tail       (seq, chain) of the stored thread (LoadThread; StoreRequest moves it on)
  system     the thread's leading system messages (LoadThread)
  summarizer {model, max_tokens} when CONTEXT_STRATEGY=summarize, else None
  phase      callable(phase, event, data): a step the client may wait on (None: it ended)
  summary    the thread's newest summary of its dropped history (LoadThread, SummarizeDropped)
  writes     the Connection the turn's writes go through (chatbot.tasks; None: the session)
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
from chatbot.flow.context import (PROMPT_TOO_LONG, SHRINK, TooLong, cost, fit, fit_summarized,
                                  new_messages, refused_as_too_long, reserve_sources, shrink,
                                  summary_message, summary_request, summary_room,
                                  with_sources)
from chatbot.flow.window import learn, reply_reserve
from chatbot.tokens import count_tokens
from chatbot.upstream import UpstreamError, empty_reply, fold

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
MAX_SHRINKS = 3  # times a context the upstream refused as too long is sent again, smaller


class Begin(Node):
    """Chat replays the thread; generate is single-turn (its turns stored, history not sent)."""

    def post(self, shared, prep_res, exec_res):
        shared.setdefault("attempts", 0)
        return shared["job"]["kind"]


class LoadThread(Node):
    def prep(self, shared):
        job = shared["job"]
        if job.get("fresh"):  # a session made for this request has no history to look up
            return (0, ""), [], None
        summary = store.latest_summary(job["session_id"], job["model"]) \
            if shared.get("summarizer") else None
        return (store.thread_tail(job["session_id"], job["model"]),
                store.leading_system(job["session_id"], job["model"]), summary)

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        shared["tail"], shared["system"], shared["summary"] = exec_res


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
        return {"new": new, "context": context, "sent_tokens": used, "dropped": dropped,
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
            shared["phase"]("summarizing", "summarizing", {"first_seq": first, "last_seq": last})
            return "summarize"


class SummarizeDropped(Node):
    """CONTEXT_STRATEGY=summarize, when BuildContext left out messages no summary covers: one
    non-streamed call for a short summary of them (extending the previous summary), stored and
    sent in place of the plain note. Any failure keeps the note."""

    def prep(self, shared):
        job, summarizer, summary = shared["job"], shared["summarizer"], shared.get("summary")
        first, last = shared["span"]
        skip = {m["seq"] for m in shared["system"]}
        messages = store.span_messages(job["session_id"], job["model"], first, last, skip)
        options = job["upstream"].get("options") or {}
        return (shared["upstream"], summarizer["model"] or job["model"], summary, messages,
                summarizer["max_tokens"], options, shared["budget"])

    def exec(self, prep_res):
        upstream, model, summary, messages, max_tokens, options, budget = prep_res
        body, shown = summary_request(model, summary and summary["content"], messages,
                                      max_tokens, options, budget)
        if not shown:
            return {"error": "none of the messages to summarize fits a request"}
        try:
            answer = upstream.post_json("/api/chat", body)
            text = ((answer.get("message") or {}).get("content") or "").strip()
        except (UpstreamError, ValueError, AttributeError) as exc:
            return {"error": getattr(exc, "error", str(exc))}
        if not text:
            return {"error": "the summary came back empty"}
        return {"text": text, "left_out": len(messages) - shown}

    def post(self, shared, prep_res, exec_res):
        job, (first, last), summary = shared["job"], shared["span"], shared.get("summary")
        model = job["model"]
        if "error" in exec_res:
            log.warning("summary of messages %d-%d failed, the note stays: %s", first, last,
                        exec_res["error"])
            shared["metrics"].inc("chatbot_context_summaries_total", model=model, outcome="failed")
            shared["phase"](None, "summarized", {"ok": False})
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
        shared["phase"](None, "summarized", {"ok": True, "first_seq": made["first_seq"],
                                             "last_seq": last})


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
                job["request_id"], shared["dropped"], shared["tail"], shared.get("writes"))

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        session_id, owner, model, new, request_id, dropped, tail, writes = exec_res
        # The turn's reads end here: no transaction stays open while the model talks.
        store.db.session.close()
        try:
            store.touch_session(session_id, owner, writes)
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


class CallUpstream(Node):
    """The one upstream call: streams the reply, relaying each chunk, until done or told to
    stop. An upstream that cannot be reached (restarting) is waited for, the request keeping
    its turn, until it answers, `upstream_wait` s pass or the request is told to stop."""

    def request(self, shared):
        raise NotImplementedError  # (path, body)

    def prep(self, shared):
        path, body = self.request(shared)
        wait = shared.get("upstream_wait")
        return (shared["upstream"], path, body, shared["emit"], shared["stop"],
                (wait, shared["stop"]) if wait else None)

    def exec(self, prep_res):
        upstream, path, body, emit, stop, wait = prep_res
        reply = {**empty_reply(), "final": None, "status": "ok", "error": None, "chunks": 0}
        try:
            for raw, chunk in upstream.stream(path, body, wait=wait):
                if "error" in chunk:
                    raise UpstreamError(500, chunk["error"])
                fold(reply, chunk)
                if chunk.get("done"):
                    reply["final"] = chunk
                    break
                emit({"t": "chunk", "raw": raw.decode()})
                reply["chunks"] += 1
                if stop():
                    reply["status"] = "cancelled"
                    break
            if reply["final"] is None and reply["status"] == "ok":
                if not stop():
                    raise UpstreamError(502, "ollama ended the reply early")
                reply["status"] = "cancelled"  # told to stop while waiting for the upstream
        except UpstreamError as exc:
            reply["status"], reply["error"] = "failed", {"status": exc.status, "error": exc.error}
        return reply

    def post(self, shared, prep_res, exec_res):
        shared["reply"] = exec_res
        if exec_res["error"]:
            shared["metrics"].inc("chatbot_upstream_errors_total", host=shared["upstream"].host,
                                  status=str(exec_res["error"]["status"]))
        if exec_res["final"]:
            shared["metrics"].inc("chatbot_tokens_generated_total",
                                  exec_res["final"].get("eval_count") or 0,
                                  model=shared["job"]["model"])


class CallChat(CallUpstream):
    def request(self, shared):
        # chatbot sizes the window itself: the upstream must refuse, never silently drop.
        return "/api/chat", {**shared["job"]["upstream"], "truncate": False,
                             "messages": [_wire(m) for m in shared["context"]]}

    def post(self, shared, prep_res, exec_res):
        super().post(shared, prep_res, exec_res)
        if exec_res["final"] and shared.get("sources"):  # Ollama's clients ignore the field
            exec_res["final"]["sources"] = shared["sources"]
        if (refused_as_too_long(exec_res["error"]) and not exec_res["chunks"]
                and shared["job"]["upstream"].get("truncate") is not False
                and shared.get("shrinks", 0) < MAX_SHRINKS):
            shared["shrinks"] = shared.get("shrinks", 0) + 1
            return "too_long"


class ShrinkContext(Node):
    """The upstream refused the context as too long: it is loaded with a smaller window than
    the model's trained one (Ollama's default context length), or its tokenizer counts more
    than our calibration said. Leave out more of the oldest history and send it again."""

    def prep(self, shared):
        job, upstream = shared["job"], shared["upstream"]
        options = job["upstream"].get("options") or {}
        target = int(shared["sent_tokens"] * SHRINK)
        loaded = None if options.get("num_ctx") else \
            shared["windows"].learn_default(upstream, job["model"])
        if loaded:  # the window it really has, sized as SizeWindow sizes one
            ratio, overhead = shared["figures"]
            reserve = reply_reserve(options, shared["reserve"])
            target = min(target, int((loaded - reserve - overhead) / ratio))
        return shared["context"], shared["system"], shared["dropped"], target

    def exec(self, prep_res):
        return shrink(*prep_res)

    def post(self, shared, prep_res, exec_res):
        if exec_res is None:  # nothing left to leave out: the client gets the upstream's 400
            return "give_up"
        shared["context"], shared["sent_tokens"], shared["dropped"] = exec_res
        log.info("upstream refused the context as too long; sending it again with %d "
                 "messages left out", shared["dropped"])
        shared["metrics"].inc("chatbot_context_truncations_total", model=shared["job"]["model"])


class CallGenerate(CallUpstream):
    """generate keeps its own endpoint: raw, suffix, template, context mean nothing to chat."""

    def request(self, shared):
        return "/api/generate", shared["job"]["upstream"]


class StoreReply(Node):
    """The reply as it ended. A turn the upstream refused before answering leaves the thread:
    its messages are marked failed and never replayed."""

    def prep(self, shared):
        job = shared["job"]
        return (job["session_id"], job["model"], job["request_id"], shared["new"],
                shared["reply"], shared["started_at"], shared["tail"], shared.get("writes"))

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        session_id, model, request_id, new, reply, started_at, tail, writes = exec_res
        if not new:  # nothing was asked (a load, or a pure resend): there is no turn to keep
            return
        if reply["error"] and not reply["chunks"]:
            store.fail_request(request_id)
            return
        store.save_reply(session_id, model, request_id, reply, reply["status"],
                         started_at=started_at, tail=tail, conn=writes)


class Finish(Node):
    """Ask the line to end the request, after the reply is stored."""

    def prep(self, shared):
        return shared["reply"]

    def exec(self, reply):
        return reply

    def post(self, shared, prep_res, exec_res):
        shared["end"](exec_res)


class Calibrate(Node):
    """Learn the model's tokens per ours from what it reports; notice when it cut the prompt."""

    def prep(self, shared):
        final = shared["reply"]["final"] or {}
        return (shared.get("figures"), shared.get("sent_tokens", 0),
                final.get("prompt_eval_count"), shared.get("window"), shared.get("pure_text"))

    def exec(self, prep_res):
        figures, sent, seen, window, pure_text = prep_res
        if figures is None:
            return None, False
        return learn(figures, sent, seen, window, pure_text)

    def post(self, shared, prep_res, exec_res):
        figures, cut = exec_res
        host, model = shared["upstream"].host, shared["job"]["model"]
        if figures:  # written with the request's metrics, in one round trip
            shared["calibration"].write(host, model, figures, pipe=shared["metrics"].pipe)
        if cut:
            _, sent, seen, window, _ = prep_res
            log.warning("upstream %s evaluated %s tokens of a prompt we sized at %s for %s "
                        "(window %s): it truncated", host, seen, sent, model, window)
            shared["metrics"].inc("chatbot_upstream_truncations_total", model=model)


def _wire(message):
    """A message as sent upstream: our bookkeeping fields stripped."""
    return {k: v for k, v in message.items() if k not in ("tokens", "seq", "logprobs")}
