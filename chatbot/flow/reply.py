"""The reply: the one upstream call (chat or generate) streamed to the client, sent again
smaller when the upstream refuses the context as too long, stored, and the request ended;
then the calibration it taught (shared store: see chatbot.flow.nodes)."""
import logging

from pocketflow import Node

from chatbot import store
from chatbot.flow.context import SHRINK, refused_as_too_long, shrink
from chatbot.flow.window import learn, reply_reserve
from chatbot.line import events
from chatbot.upstream import UpstreamError, empty_reply, fold

log = logging.getLogger(__name__)
MAX_SHRINKS = 3  # times a context the upstream refused as too long is sent again, smaller


class CallUpstream(Node):
    """The one upstream call: streams the reply, relaying each chunk, until done or told to
    stop. An upstream that cannot be reached (restarting) is waited for, the request keeping
    its turn, until it answers, `upstream_wait` s pass or the request is told to stop."""

    def request(self, shared):
        raise NotImplementedError  # (path, body)

    def prep(self, shared):
        path, body = self.request(shared)
        wait = shared.get("upstream_wait")
        running = shared["running"]
        return (shared["upstream"], path, body, running.emit, running.stop_asked,
                (wait, running.stop_asked) if wait else None)

    def exec(self, prep_res):
        upstream, path, body, emit, stop, wait = prep_res
        reply = new_reply()
        try:
            for raw, chunk in upstream.stream(path, body, wait=wait):
                if "error" in chunk:
                    raise UpstreamError(500, chunk["error"])
                fold(reply, chunk)
                if chunk.get("done"):
                    reply["final"] = chunk
                    break
                emit(events.chunk(raw.decode()))
                reply["chunks"] += 1
                if stop():
                    reply["status"] = "cancelled"
                    break
            if reply["final"] is None and reply["status"] == "ok":
                if not stop():
                    raise UpstreamError(502, "ollama ended the reply early")
                reply["status"] = "cancelled"  # told to stop while waiting for the upstream
        except UpstreamError as exc:
            _failed(reply, exc)
        return reply

    def post(self, shared, prep_res, exec_res):
        overdue = shared["running"].overdue_error()
        if overdue and exec_res["status"] == "cancelled":  # stopped by MAX_REQUEST_SECONDS
            exec_res = {**exec_res, "status": "failed", "error": overdue}
        shared["reply"] = exec_res
        if exec_res["error"]:
            shared["metrics"].inc("chatbot_upstream_errors_total", host=shared["upstream"].host,
                                  status=str(exec_res["error"]["status"]))
        final = exec_res["final"]
        if final:
            shared["metrics"].inc("chatbot_tokens_generated_total", final.get("eval_count") or 0,
                                  model=shared["job"]["model"])
            # By how the line picked the request: what a warm pick saves is the difference.
            if isinstance(final.get("prompt_eval_duration"), (int, float)):
                shared["metrics"].observe("chatbot_prompt_eval_seconds",
                                          final["prompt_eval_duration"] / 1e9,
                                          model=shared["job"]["model"],
                                          pick=shared["running"].picked)


class CallEmbed(Node):
    """An embedding request, in its asker's turn of the line: one upstream call, whose JSON is
    the reply (the final event's `d`)."""

    def prep(self, shared):
        job = shared["job"]
        return shared["upstream"], job["path"], job["upstream"]

    def exec(self, prep_res):
        upstream, path, body = prep_res
        reply = new_reply()
        try:
            reply["final"] = upstream.post_json(path, body)
        except UpstreamError as exc:
            _failed(reply, exc)
        return reply

    def post(self, shared, prep_res, exec_res):
        shared["reply"] = exec_res


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
                shared["reply"], shared["started_at"], shared["tail"], shared.get("writes"),
                shared.get("fork") is not None or shared.get("unanswered"))

    def exec(self, prep_res):
        return prep_res

    def post(self, shared, prep_res, exec_res):
        session_id, model, request_id, new, reply, started_at, tail, writes, answers = exec_res
        # Nothing new and nothing it answers (a load, or a pure resend): no turn to keep. A
        # regenerate (a branch) or a retry of a question left unanswered keeps its reply.
        if not new and not answers:
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
        shared["running"].end(exec_res)


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


def new_reply():
    """A call's reply before the upstream answers (see `reply` in chatbot.flow.nodes)."""
    return {**empty_reply(), "final": None, "status": "ok", "error": None, "chunks": 0}


def _failed(reply, exc):
    reply["status"], reply["error"] = "failed", {"status": exc.status, "error": exc.error}


def _wire(message):
    """A message as sent upstream: our bookkeeping fields stripped."""
    return {k: v for k, v in message.items() if k not in ("tokens", "seq", "logprobs")}
