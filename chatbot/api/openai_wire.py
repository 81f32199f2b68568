"""OpenAI's response shapes for a queued turn, as Ollama's compatibility layer writes them
(openai/openai.go and middleware/openai.go, v0.33): chat.completion(.chunk) and
text_completion, streamed as Server-Sent Events ending with `data: [DONE]`.

A chat stream: the role only in the first chunk; thinking as `reasoning` (apart from content
in the same upstream chunk); `finish_reason` in a chunk of its own with an empty delta; with
`stream_options.include_usage`, then a usage chunk with `choices: []`; one `created` for the
whole stream, the first upstream chunk's."""
import json
import random
import time
from datetime import datetime

from flask import Response

from chatbot.api.wire import dumps

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def error_body(status, message):
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}


def failure(status, message):
    return Response(dumps(error_body(status, message)) + "\n", status=status,
                    mimetype="application/json")


def usage(final):
    prompt, completion = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def sse(obj):
    return f"data: {dumps(obj)}\n\n"


def unix(created_at):
    """Ollama's RFC 3339 created_at as Unix seconds (now when there is none)."""
    try:
        return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except (AttributeError, ValueError):
        return int(time.time())


def tool_calls(calls):
    """Ollama's tool calls (arguments as an object, key order kept) in OpenAI's shape."""
    return [{"id": c.get("id") or "", "index": (c.get("function") or {}).get("index") or 0,
             "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": dumps(c["function"].get("arguments") or {})}}
            for c in calls]


class OpenAIChat:
    mimetype = "text/event-stream"
    id_prefix = "chatcmpl"

    def __init__(self, model, include_usage=False):
        self.model, self.include_usage = model, include_usage
        self.id = f"{self.id_prefix}-{random.randrange(999)}"
        self.created = None  # the stream's one timestamp, from its first chunk
        self.role_sent = self.tool_call_sent = False

    def recipe(self):
        return [type(self).__name__, [self.model, self.include_usage]]

    def envelope(self, choices, created, obj="chat.completion.chunk"):
        return {"id": self.id, "object": obj, "created": created, "model": self.model,
                "system_fingerprint": "fp_ollama", "choices": choices}

    def _stamp(self, response):
        if self.created is None:
            self.created = unix(response.get("created_at"))
        return self.created

    def _chunk(self, response, content, reasoning, calls, logprobs):
        delta = {}
        if not self.role_sent:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        if reasoning:
            delta["reasoning"] = reasoning
        if calls:
            delta["tool_calls"] = tool_calls(calls)
            self.tool_call_sent = True
        self.role_sent = True
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return sse(self.envelope([choice], self._stamp(response)))

    def _chunks(self, response):
        """openai.ToStreamChunks: thinking and content of one upstream chunk go apart."""
        message = response.get("message") or {}
        content, thinking = message.get("content") or "", message.get("thinking") or ""
        calls, logprobs = message.get("tool_calls"), response.get("logprobs")
        if thinking and (content or calls):
            return (self._chunk(response, None, thinking, None, logprobs)
                    + self._chunk(response, content, "", calls, None))
        return self._chunk(response, content, thinking, calls, logprobs)

    def chunk(self, raw):
        return self._chunks(json.loads(raw))

    def final(self, event):
        final = event["d"]
        message = final.get("message") or {}
        out = ""
        # A final chunk with nothing in it is the metrics trailer: no content chunk for it,
        # unless nothing was sent at all (a wholly empty completion still opens with a role).
        if not self.role_sent or message.get("content") or message.get("thinking") or \
                message.get("tool_calls") or final.get("logprobs"):
            out += self._chunks(final)
        reason = final.get("done_reason") or "stop"
        if reason == "stop" and self.tool_call_sent:
            reason = "tool_calls"
        created = self._stamp(final)
        out += sse(self.envelope([{"index": 0, "delta": {}, "finish_reason": reason}], created))
        if self.include_usage:
            out += sse({**self.envelope([], created), "usage": usage(final)})
        return out + "data: [DONE]\n\n"

    def error_line(self, error):
        return sse(error_body(500, error)) + "data: [DONE]\n\n"

    def queue_status(self, text, model):
        """Where the request is in line, as reasoning (never stored)."""
        return self._chunk({}, None, text, None, None)

    def whole(self, event):
        """openai.ToChatCompletion."""
        final, reply = event["d"], event["reply"]
        message = {"role": "assistant", "content": reply["content"]}
        if reply.get("thinking"):
            message["reasoning"] = reply["thinking"]
        if reply.get("tool_calls"):
            message["tool_calls"] = tool_calls(reply["tool_calls"])
        reason = final.get("done_reason") or None
        if reason == "stop" and reply.get("tool_calls"):
            reason = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": reason}
        if reply.get("logprobs"):
            choice["logprobs"] = {"content": reply["logprobs"]}
        body = self.envelope([choice], unix(final.get("created_at")), "chat.completion")
        body["usage"] = usage(final)
        return Response(dumps(body) + "\n", mimetype="application/json")

    def failure(self, status, error):
        return failure(status, error)


class OpenAICompletion(OpenAIChat):
    """text_completion: every chunk stamped when written; with include_usage, each carries
    a zero usage until the last, which has the counts (middleware CompleteWriter)."""
    id_prefix = "cmpl"
    queue_status = None  # a text completion has no place for thinking

    def envelope(self, choices, created=None, obj="text_completion"):
        return {"id": self.id, "object": obj, "created": int(time.time()), "choices": choices,
                "model": self.model, "system_fingerprint": "fp_ollama"}

    def _completion_chunk(self, response):
        choice = {"text": response.get("response") or "", "index": 0,
                  "finish_reason": response.get("done_reason") or None}
        body = self.envelope([choice])
        if self.include_usage:
            body["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return body

    def chunk(self, raw):
        return sse(self._completion_chunk(json.loads(raw)))

    def final(self, event):
        body = self._completion_chunk(event["d"])
        out = sse(body)
        if self.include_usage:
            out += sse({**body, "choices": [], "usage": usage(event["d"])})
        return out + "data: [DONE]\n\n"

    def whole(self, event):
        final = event["d"]
        body = self.envelope([{"text": event["reply"]["content"], "index": 0,
                               "finish_reason": final.get("done_reason") or None}])
        body["created"] = unix(final.get("created_at"))
        body["usage"] = usage(final)
        return Response(dumps(body) + "\n", mimetype="application/json")
