"""OpenAI's response shapes for a queued turn: chat.completion(.chunk) and text_completion,
streamed as Server-Sent Events ending with `data: [DONE]`."""
import json
import random
import time

from flask import Response

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "server_error"}


def error_body(status, message):
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}


def failure(status, message):
    return Response(json.dumps(error_body(status, message)), status=status,
                    mimetype="application/json")


def finish_reason(final):
    reason = (final or {}).get("done_reason")
    return "length" if reason == "length" else "stop"


def usage(final):
    prompt, completion = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class OpenAIChat:
    mimetype = "text/event-stream"
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, model, include_usage=False):
        self.model, self.include_usage = model, include_usage
        self.id = f"{self.id_prefix}-{random.randint(0, 999)}"
        self.created = int(time.time())

    def recipe(self):
        return [type(self).__name__, [self.model, self.include_usage]]

    def envelope(self, object_name, choices):
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model, "system_fingerprint": "fp_ollama", "choices": choices}

    def delta_choice(self, message, reason):
        delta = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = tool_calls(message["tool_calls"])
        return {"index": 0, "delta": delta, "finish_reason": reason}

    def chunk(self, raw):
        message = json.loads(raw).get("message") or {}
        return sse(self.envelope(self.chunk_object, [self.delta_choice(message, None)]))

    def final(self, event):
        final = event["d"]
        last = self.envelope(self.chunk_object, [self.delta_choice(final.get("message") or {},
                                                                   finish_reason(final))])
        out = sse(last)
        if self.include_usage:
            out += sse({**self.envelope(self.chunk_object, []), "usage": usage(final)})
        return out + "data: [DONE]\n\n"

    def error_line(self, error):
        return sse(error_body(500, error)) + "data: [DONE]\n\n"

    def whole(self, event):
        final, reply = event["d"], event["reply"]
        message = {"role": "assistant", "content": reply["content"]}
        if reply.get("tool_calls"):
            message["tool_calls"] = tool_calls(reply["tool_calls"])
        reason = "tool_calls" if reply.get("tool_calls") else finish_reason(final)
        body = self.envelope(self.object, [{"index": 0, "message": message,
                                            "finish_reason": reason}])
        body["usage"] = usage(final)
        return Response(json.dumps(body, ensure_ascii=False), mimetype="application/json")

    def failure(self, status, error):
        return failure(status, error)


class OpenAICompletion(OpenAIChat):
    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def chunk(self, raw):
        text = json.loads(raw).get("response") or ""
        return sse(self.envelope(self.object, [{"text": text, "index": 0, "finish_reason": None}]))

    def final(self, event):
        final = event["d"]
        out = sse(self.envelope(self.object, [{"text": "", "index": 0,
                                               "finish_reason": finish_reason(final)}]))
        if self.include_usage:
            out += sse({**self.envelope(self.object, []), "usage": usage(final)})
        return out + "data: [DONE]\n\n"

    def whole(self, event):
        final = event["d"]
        body = self.envelope(self.object, [{"text": event["reply"]["content"], "index": 0,
                                            "finish_reason": finish_reason(final)}])
        body["usage"] = usage(final)
        return Response(json.dumps(body, ensure_ascii=False), mimetype="application/json")


def tool_calls(calls):
    """Ollama's tool calls (arguments as an object) in OpenAI's shape (arguments as JSON text)."""
    return [{"id": f"call_{random.randint(0, 10**8)}", "index": i, "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"].get("arguments") or {})}}
            for i, c in enumerate(calls)]
