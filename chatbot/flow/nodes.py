"""The chat flow's nodes. `exec` works only on what `prep` hands it; `post` writes `shared`.

Shared store (built by chatbot.tasks):
  job       {request_id, session_id, kind: chat|generate, model, messages: what the session
            gains, upstream: the request's own fields, sent upstream untouched}
  emit      callable(event) -> None: relays an event to the waiting web request
  cancelled callable() -> bool: the client went away
  upstream  chatbot.upstream.Upstream
  started_at  when the worker took the request
  history   the session's stored thread for this model (written by LoadSession)
  new       the request's messages the session did not have, with token counts (BuildContext)
  context   the messages sent upstream (BuildContext)
  reply     {content, thinking, tool_calls, final, status, error} (CallUpstream)
"""
from pocketflow import Node

from chatbot import store
from chatbot.flow.context import count_tokens, new_messages
from chatbot.upstream import UpstreamError


class LoadSession(Node):
    def prep(self, shared):
        job = shared["job"]
        return job["session_id"], job["model"], job["kind"]

    def exec(self, prep_res):
        session_id, model, kind = prep_res
        store.open_session(session_id)
        # generate is single-turn: its prompt is stored but history is not replayed to it.
        return store.load_thread(session_id, model) if kind == "chat" else []

    def post(self, shared, prep_res, exec_res):
        shared["history"] = exec_res


class BuildContext(Node):
    def prep(self, shared):
        return shared["history"], shared["job"]["messages"]

    def exec(self, prep_res):
        history, messages = prep_res
        if not messages:  # an empty request only loads the model: send it as it is
            return [], []
        new = [{**m, "tokens": count_tokens(m)} for m in new_messages(history, messages)]
        return new, history + [_wire(m) for m in new]

    def post(self, shared, prep_res, exec_res):
        shared["new"], shared["context"] = exec_res


class StoreRequest(Node):
    def prep(self, shared):
        job = shared["job"]
        return job["session_id"], job["model"], shared["new"], job["request_id"]

    def exec(self, prep_res):
        session_id, model, new, request_id = prep_res
        if new:
            store.append_messages(session_id, model, new, request_id)


class CallUpstream(Node):
    def prep(self, shared):
        job = shared["job"]
        if job["kind"] == "chat":
            path, body = "/api/chat", {**job["upstream"], "messages": shared["context"]}
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


class StoreReply(Node):
    def prep(self, shared):
        job = shared["job"]
        return (job["session_id"], job["model"], job["request_id"], shared["new"],
                shared["reply"], shared["started_at"])

    def exec(self, prep_res):
        session_id, model, request_id, new, reply, started_at = prep_res
        if not new:  # nothing was asked (a load, or a pure resend): there is no turn to keep
            return
        message = {"role": "assistant", "content": reply["content"],
                   "thinking": reply["thinking"], "tool_calls": reply["tool_calls"]}
        message["tokens"] = count_tokens(message)
        store.append_messages(session_id, model, [message], request_id,
                              status=reply["status"], started_at=started_at)


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
    return {k: v for k, v in message.items() if k != "tokens"}
