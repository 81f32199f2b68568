"""The chat flow's nodes. `exec` works only on what `prep` hands it; `post` writes `shared`.

Shared store (built by chatbot.tasks):
  job        {request_id, session_id, kind: chat|generate, model, messages: what the session
             gains, upstream: the request's own fields, sent upstream untouched, host}
  emit       callable(event): relays an event to the waiting web request
  cancelled  callable() -> bool: the client went away
  upstream   chatbot.upstream.Upstream for the job's host
  windows, calibration, metrics, reserve   context-window helpers and settings
  started_at when the worker took the request
  tail       (seq, chain) of the stored thread (LoadSession; StoreRequest moves it on)
  system     the thread's leading system messages (LoadSession)
  budget     our tokens the context may use (SizeWindow)
  new, context, sent_tokens, dropped   (BuildContext)
  reply      {content, thinking, tool_calls, final, status, error} (CallUpstream)
"""
import logging

from pocketflow import Node

from chatbot import store
from chatbot.flow.context import TooLong, count_tokens, fit, new_messages
from chatbot.flow.window import reply_reserve
from chatbot.upstream import UpstreamError

log = logging.getLogger(__name__)


class LoadSession(Node):
    def prep(self, shared):
        job = shared["job"]
        return job["session_id"], job["model"], job["kind"]

    def exec(self, prep_res):
        session_id, model, kind = prep_res
        created = store.touch_session(session_id)
        # generate is single-turn (its turns are stored, history not replayed); a session
        # created just now has no history to look up.
        if kind != "chat" or created:
            return (0, ""), []
        return store.thread_tail(session_id, model), store.leading_system(session_id, model)

    def post(self, shared, prep_res, exec_res):
        shared["tail"], shared["system"] = exec_res


class SizeWindow(Node):
    """Our-token budget: the window (num_ctx, else the model's own) less the reply's reserve,
    scaled by how the model's tokenizer compares with ours."""

    def prep(self, shared):
        job = shared["job"]
        return (shared["windows"], shared["calibration"], shared["upstream"], job["model"],
                job["upstream"].get("options") or {}, shared["reserve"], job["kind"])

    def exec(self, prep_res):
        windows, calibration, upstream, model, options, reserve, kind = prep_res
        if kind != "chat":
            return None
        window = options.get("num_ctx") or windows.length(upstream, model)
        return int((window - reply_reserve(options, reserve)) / calibration.ratio(upstream.host, model))

    def post(self, shared, prep_res, exec_res):
        shared["budget"] = exec_res


class BuildContext(Node):
    def prep(self, shared):
        job = shared["job"]
        return (job, shared["tail"], shared["system"], shared["budget"])

    def exec(self, prep_res):
        job, tail, system, budget = prep_res
        if not job["messages"]:  # an empty request only loads the model: send it as it is
            return {"new": [], "context": [], "sent_tokens": 0, "dropped": 0}
        fresh = job["messages"] if job["kind"] != "chat" else new_messages(tail, job["messages"])
        new = [{**m, "tokens": count_tokens(m)} for m in fresh]
        if job["kind"] != "chat":
            return {"new": new, "context": [], "sent_tokens": 0, "dropped": 0}
        try:
            stored = store.newest_first(job["session_id"], job["model"]) if tail[0] else ()
            context, used, dropped = fit(system, stored, new, budget, tail[0])
        except TooLong as exc:
            used, budget = exc.args
            return {"error": {"status": 400, "error": (
                f"the request's messages need about {used} tokens but model '{job['model']}' "
                f"has room for about {budget} (context window less the reply's reserve); "
                "send fewer or shorter messages, or raise options.num_ctx")}}
        return {"new": new, "context": context, "sent_tokens": used, "dropped": dropped}

    def post(self, shared, prep_res, exec_res):
        if "error" in exec_res:
            shared["reply"] = {"status": "failed", "error": exec_res["error"], "final": None}
            return "too_long"
        shared.update(exec_res)


class StoreRequest(Node):
    def prep(self, shared):
        job = shared["job"]
        return (job["session_id"], job["model"], shared["new"], job["request_id"],
                shared["dropped"], shared["tail"] if job["kind"] == "chat" else None)

    def exec(self, prep_res):
        session_id, model, new, request_id, dropped, tail = prep_res
        # Always commits: the session's last use counts even for a load or a pure resend.
        return store.append_messages(session_id, model, new, request_id, truncated=dropped,
                                     tail=tail)

    def post(self, shared, prep_res, exec_res):
        shared["tail"] = exec_res
        if shared["dropped"]:
            shared["metrics"].inc("chatbot_context_truncations_total", model=shared["job"]["model"])


class CallUpstream(Node):
    def prep(self, shared):
        job = shared["job"]
        if job["kind"] == "chat":
            path, body = "/api/chat", {**job["upstream"], "messages": [_wire(m) for m in shared["context"]]}
        else:  # generate keeps its own endpoint: raw, suffix, template, context mean nothing to chat
            path, body = "/api/generate", job["upstream"]
        return shared["upstream"], path, body, shared["emit"], shared["cancelled"]

    def exec(self, prep_res):
        upstream, path, body, emit, cancelled = prep_res
        reply = {"content": "", "thinking": "", "tool_calls": [], "final": None,
                 "status": "ok", "error": None}
        try:
            for raw, chunk in upstream.stream(path, body):
                if "error" in chunk:
                    raise UpstreamError(500, chunk["error"])
                message = chunk.get("message") or chunk  # generate's chunk is its own message
                reply["content"] += message.get("content") or message.get("response") or ""
                reply["thinking"] += message.get("thinking") or ""
                reply["tool_calls"] += message.get("tool_calls") or []
                if chunk.get("done"):
                    reply["final"] = chunk
                    break
                emit({"t": "chunk", "raw": raw.decode()})
                if cancelled():
                    reply["status"] = "cancelled"
                    break
            if reply["final"] is None and reply["status"] == "ok":
                raise UpstreamError(502, f"ollama at {upstream.host} ended the reply early")
        except UpstreamError as exc:
            reply["status"], reply["error"] = "failed", {"status": exc.status, "error": exc.error}
        return reply

    def post(self, shared, prep_res, exec_res):
        shared["reply"] = exec_res
        error, job = exec_res["error"], shared["job"]
        if error:
            shared["metrics"].inc("chatbot_upstream_errors_total", host=shared["upstream"].host,
                                  status=str(error["status"]))
        if exec_res["final"]:
            shared["metrics"].inc("chatbot_tokens_generated_total",
                                  exec_res["final"].get("eval_count") or 0, model=job["model"])


class StoreReply(Node):
    def prep(self, shared):
        job = shared["job"]
        return (job["session_id"], job["model"], job["request_id"], shared["new"],
                shared["reply"], shared["started_at"], shared["tail"])

    def exec(self, prep_res):
        session_id, model, request_id, new, reply, started_at, tail = prep_res
        if not new:  # nothing was asked (a load, or a pure resend): there is no turn to keep
            return
        message = {"role": "assistant", "content": reply["content"],
                   "thinking": reply["thinking"], "tool_calls": reply["tool_calls"]}
        message["tokens"] = count_tokens(message)
        store.append_messages(session_id, model, [message], request_id,
                              status=reply["status"], started_at=started_at, tail=tail)


class Calibrate(Node):
    """Learn the model's tokens per ours from what it reports; notice when it cut the prompt."""

    def prep(self, shared):
        final = shared["reply"]["final"] or {}
        return (shared["calibration"], shared["upstream"].host, shared["job"]["model"],
                shared["sent_tokens"], final.get("prompt_eval_count"))

    def exec(self, prep_res):
        calibration, host, model, sent, seen = prep_res
        return calibration.observe(host, model, sent, seen)

    def post(self, shared, prep_res, exec_res):
        if not exec_res:
            _, host, model, sent, seen = prep_res
            log.warning("upstream %s evaluated %s tokens of a prompt we sized at %s for %s: "
                        "it truncated", host, seen, sent, model)
            shared["metrics"].inc("chatbot_upstream_truncations_total", model=model)


class Finish(Node):
    """Tell the waiting request how it ended, after the reply is stored."""

    def prep(self, shared):
        return shared["reply"], shared["emit"]

    def exec(self, prep_res):
        reply, emit = prep_res
        if reply["error"]:
            emit({"t": "error", **reply["error"]})
        elif reply["status"] == "cancelled":
            emit({"t": "error", "status": 499, "error": "request cancelled"})
        else:
            whole = {k: reply[k] for k in ("content", "thinking", "tool_calls")}
            emit({"t": "done", "d": reply["final"], "reply": whole})


def _wire(message):
    """A message as sent upstream: our bookkeeping fields stripped."""
    return {k: v for k, v in message.items() if k not in ("tokens", "seq")}
