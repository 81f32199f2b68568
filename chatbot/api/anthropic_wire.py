"""Anthropic's response shapes for a queued chat turn, as Ollama's compatibility layer writes
them (anthropic/anthropic.go ToMessagesResponse and StreamConverter, middleware/anthropic.go):
a `message` object, or Server-Sent Events `message_start`, `ping`, `content_block_start`,
`content_block_delta` (text_delta, thinking_delta, input_json_delta), `content_block_stop`,
`message_delta` (stop_reason, usage), `message_stop`; an error mid-stream as `event: error`.
Also the error body every refusal on the Anthropic door is written in, and the model list the
anthropic SDK reads."""
import json
import re
import secrets
from datetime import datetime, timezone

from flask import Response, request

from chatbot.api.wire import dumps

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def asked():
    """Whether the client is Anthropic's (its SDKs and Claude Code send anthropic-version)."""
    return "anthropic-version" in request.headers


def error_body(status, message):
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}


def json_response(body, status=200):
    return Response(dumps(body) + "\n", status=status, mimetype="application/json")


def failure(status, message, headers=None):
    resp = json_response(error_body(status, message), status)
    resp.headers.update(headers or {})
    return resp


def new_id(prefix):
    return f"{prefix}_{secrets.token_hex(12)}"  # anthropic.generateID


def sse(event, data):
    return f"event: {event}\ndata: {dumps(data)}\n\n"


def stop_reason(reason, tool_calls):
    """anthropic.mapStopReason: Ollama's done_reason as Anthropic's stop_reason."""
    if tool_calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens", "": None}.get(reason or "",
                                                                       "stop_sequence")


def usage(final):
    return {"input_tokens": final.get("prompt_eval_count") or 0,
            "output_tokens": final.get("eval_count") or 0}


def tool_use(call):
    function = call.get("function") or {}
    return {"type": "tool_use", "id": call.get("id") or new_id("toolu"),
            "name": function.get("name") or "", "input": function.get("arguments") or {}}


class AnthropicMessages:
    mimetype = "text/event-stream"

    def __init__(self, model, message_id=None, estimated_input=0):
        self.model, self.estimated_input = model, estimated_input
        self.id = message_id or new_id("msg")
        self.started = self.thinking_started = self.thinking_done = self.text_started = False
        self.index, self.calls_sent = 0, set()

    def recipe(self):  # a client that comes back gets the same message id
        return [type(self).__name__, [self.model, self.id, self.estimated_input]]

    def message(self, content, reason, use):
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": None, "usage": use}

    def _block(self, kind, **extra):
        return "content_block_" + kind, {"type": "content_block_" + kind, "index": self.index,
                                         **extra}

    def _events(self, response):
        """StreamConverter.Process: one upstream chunk as Anthropic's events."""
        out, message = [], response.get("message") or {}
        if not self.started:
            self.started = True
            inputs = response.get("prompt_eval_count") or self.estimated_input
            start = self.message([], None, {"input_tokens": inputs, "output_tokens": 0})
            out += [("message_start", {"type": "message_start", "message": start}),
                    ("ping", {"type": "ping"})]
        thinking, text = message.get("thinking") or "", message.get("content") or ""
        if thinking and not self.thinking_done:
            if self.text_started:
                out.append(self._block("stop"))
                self.index, self.text_started = self.index + 1, False
            if not self.thinking_started:
                self.thinking_started = True
                out.append(self._block("start", content_block={"type": "thinking",
                                                               "thinking": ""}))
            out.append(self._block("delta", delta={"type": "thinking_delta",
                                                   "thinking": thinking}))
        if text:
            out += self._close_thinking()
            if not self.text_started:
                self.text_started = True
                out.append(self._block("start", content_block={"type": "text", "text": ""}))
            out.append(self._block("delta", delta={"type": "text_delta", "text": text}))
        for call in message.get("tool_calls") or ():
            block = tool_use(call)
            if call.get("id") and call["id"] in self.calls_sent:
                continue
            out += self._close_thinking()
            if self.text_started:
                out.append(self._block("stop"))
                self.index, self.text_started = self.index + 1, False
            out += [self._block("start", content_block={**block, "input": {}}),
                    self._block("delta", delta={"type": "input_json_delta",
                                                "partial_json": dumps(block["input"])}),
                    self._block("stop")]
            self.calls_sent.add(block["id"])
            self.index += 1
        return out

    def _close_thinking(self):
        if not self.thinking_started or self.thinking_done:
            return []
        self.thinking_done = True
        stop = self._block("stop")
        self.index += 1
        return [stop]

    def chunk(self, raw):
        return "".join(sse(*event) for event in self._events(json.loads(raw)))

    def final(self, event):
        final = event["d"]
        events = self._events(final)
        if self.text_started or (self.thinking_started and not self.thinking_done):
            events.append(self._block("stop"))
        reason = stop_reason(final.get("done_reason"), self.calls_sent)
        events += [("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": reason, "stop_sequence": None},
                                      "usage": usage(final)}),
                   ("message_stop", {"type": "message_stop"})]
        return "".join(sse(*e) for e in events)

    def error_line(self, error):
        return sse("error", error_body(500, error))

    def whole(self, event):
        """ToMessagesResponse."""
        final, reply = event["d"], event["reply"]
        content = []
        if reply.get("thinking"):
            content.append({"type": "thinking", "thinking": reply["thinking"]})
        if reply.get("content"):
            content.append({"type": "text", "text": reply["content"]})
        calls = reply.get("tool_calls") or []
        content += [tool_use(call) for call in calls]
        return json_response(self.message(content, stop_reason(final.get("done_reason"), calls),
                                          usage(final)))

    def failure(self, status, error):
        return failure(status, error)


STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")


def rfc3339(stamp):
    """Ollama's modified_at (nanoseconds, any offset) as RFC 3339 UTC seconds."""
    found = STAMP.match(stamp or "")
    if not found:
        return "1970-01-01T00:00:00Z"
    when = datetime.fromisoformat(found[1] + (found[2] or "Z").replace("Z", "+00:00"))
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_entry(model):
    """An Ollama model (from /api/tags) as Anthropic's ModelInfo."""
    return {"type": "model", "id": model["name"], "display_name": model["name"],
            "created_at": rfc3339(model.get("modified_at"))}


def model_list(models):
    data = [model_entry(m) for m in models]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
