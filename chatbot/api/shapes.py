"""Ollama's wire format: JSON as Go writes it, and generate's shape of a chat reply."""
import json

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def dumps(obj):
    """JSON as Go's encoding/json writes it (compact, UTF-8, HTML characters escaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_GO_ESCAPES)


def chat_final(final, reply, session_id, full):
    """The last chat object: the upstream's final chunk, with the whole reply when not streamed."""
    out = dict(final)
    if full:
        message = {"role": "assistant", "content": reply["content"]}
        if reply.get("thinking"):
            message["thinking"] = reply["thinking"]
        if reply.get("tool_calls"):
            message["tool_calls"] = reply["tool_calls"]
        out["message"] = message
    out["session_id"] = session_id
    return out


def generate_chunk(chunk):
    message = chunk.get("message") or {}
    out = {"model": chunk.get("model"), "created_at": chunk.get("created_at"),
           "response": message.get("content") or ""}
    if message.get("thinking"):
        out["thinking"] = message["thinking"]
    out["done"] = chunk.get("done", False)
    return out


def generate_final(final, reply, session_id, full):
    out = generate_chunk(final)
    if full:
        out["response"] = reply["content"]
        if reply.get("thinking"):
            out["thinking"] = reply["thinking"]
    out.update({k: v for k, v in final.items() if k not in ("message", "model", "created_at", "done")})
    out["session_id"] = session_id
    return out
