"""How a queued turn is written back to the client: Ollama's NDJSON (chat and generate).

A wire turns relay events into the response: `chunk(raw)` a streamed line, `final(event)` the
last line, `whole(event)` the non-streamed body, `failure(status, error)` an error response;
`recipe()` is what makes the same wire again, for a client that comes back (chatbot.api.turns).
"""
import json
from datetime import datetime, timezone

from flask import Response

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def dumps(obj):
    """JSON as Go's encoding/json writes it (compact, UTF-8, HTML characters escaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_GO_ESCAPES)


class OllamaChat:
    mimetype = "application/x-ndjson"

    def __init__(self, session_id):
        self.session_id = session_id

    def recipe(self):
        return [type(self).__name__, [self.session_id]]

    def chunk(self, raw):
        return raw + "\n"  # the upstream's own bytes

    def final(self, event):
        return dumps({**event["d"], "session_id": self.session_id}) + "\n"

    def error_line(self, error):
        return dumps({"error": error}) + "\n"

    def whole(self, event):
        return Response(dumps({**self.merged(event), "session_id": self.session_id}),
                        mimetype="application/json")

    def merged(self, event):
        """The final chunk carrying the whole reply, as Ollama answers when not streaming."""
        reply, out = event["reply"], dict(event["d"])
        out["message"] = reply_message(reply)
        return with_logprobs(out, reply)

    def failure(self, status, error):
        resp = Response(dumps({"error": error}), status=status, mimetype="application/json")
        return resp

    def queue_status(self, text, model):
        """A chunk of thinking that says where the request is in line (never stored)."""
        return dumps({"model": model, "created_at": now(),
                      "message": {"role": "assistant", "content": "", "thinking": text},
                      "done": False}) + "\n"


class OllamaGenerate(OllamaChat):
    def queue_status(self, text, model):
        return dumps({"model": model, "created_at": now(), "response": "", "thinking": text,
                      "done": False}) + "\n"

    def merged(self, event):
        reply, out = event["reply"], dict(event["d"])
        out["response"] = reply["content"]
        if reply.get("thinking"):
            out["thinking"] = reply["thinking"]
        return with_logprobs(out, reply)


def now():
    """The time as Ollama stamps a chunk (RFC 3339, UTC, nanoseconds)."""
    stamp = datetime.now(timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z"


def reply_message(reply):
    """A whole reply as chat's assistant message."""
    message = {"role": "assistant", "content": reply["content"]}
    if reply.get("thinking"):
        message["thinking"] = reply["thinking"]
    if reply.get("tool_calls"):
        message["tool_calls"] = reply["tool_calls"]
    return message


def with_logprobs(final, reply):
    """The whole reply's logprobs in the final body, where Ollama puts them: after
    done_reason, before the metrics."""
    if not reply.get("logprobs"):
        return final
    out = {}
    for key, value in final.items():
        if key == "total_duration":
            out["logprobs"] = reply["logprobs"]
        out[key] = value
    out.setdefault("logprobs", reply["logprobs"])
    return out
