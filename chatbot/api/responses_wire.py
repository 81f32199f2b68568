"""OpenAI's Responses API shapes for a queued turn, as Ollama writes them (openai/responses.go:
ToResponse and ResponsesStreamConverter, v0.13.3 and later), with what Ollama leaves out
because it keeps nothing: `previous_response_id`, `store`, `background`, and a response's
`status` other than completed (incomplete when the model hit max_output_tokens, failed,
cancelled).

A stream is `event: TYPE` / `data: {...}` pairs numbered by `sequence_number`: created,
in_progress, then per output item (reasoning, message text, function calls) its added,
deltas and done events, and last `response.completed` (or `.incomplete`, `.failed`) with the
whole response. Item ids come from the response's id and `created_at` from when it was
asked, so the same reply read again (a client that comes back with `starting_after`) is the
same events, byte for byte."""
import json
import time

from flask import Response

from chatbot.api import openai_wire
from chatbot.api.wire import dumps


def output_text(text):
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesWire:
    mimetype = "text/event-stream"

    def __init__(self, model, response_id, echo, starting_after=-1):
        """`echo`: what the response object repeats of its request (chatbot.api.responses);
        `starting_after`: the last sequence number the client has (its stream goes on after)."""
        self.model, self.id, self.echo = model, response_id, echo
        self.starting_after = starting_after
        self.on_end = None  # called with the ended response object (its keeper saves it)
        suffix = response_id.removeprefix("resp_")
        self.message_id, self.reasoning_id = f"msg_{suffix}", f"rs_{suffix}"
        self.call_prefix = f"fc_{suffix}"
        self.sequence, self.output_index, self.items = 0, 0, []
        self.text, self.thinking = "", ""
        self.text_started = self.thinking_started = self.calls_sent = self.opened = False

    def recipe(self):
        return [type(self).__name__, [self.model, self.id, self.echo]]

    # The response object

    def response(self, status, output=(), usage=None, error=None, reason=None):
        echo = self.echo
        return {
            "id": self.id, "object": "response", "created_at": echo["created_at"],
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": {"reason": reason} if reason else None,
            "model": self.model, "previous_response_id": echo.get("previous_response_id"),
            "instructions": echo.get("instructions"), "output": list(output), "error": error,
            "tools": echo.get("tools") or [], "tool_choice": "auto",
            "truncation": echo.get("truncation") or "disabled", "parallel_tool_calls": True,
            "text": {"format": echo.get("format") or {"type": "text"}},
            "top_p": echo.get("top_p", 1.0), "presence_penalty": 0, "frequency_penalty": 0,
            "top_logprobs": 0, "temperature": echo.get("temperature", 1.0),
            "reasoning": echo.get("reasoning"), "usage": usage,
            "max_output_tokens": echo.get("max_output_tokens"), "max_tool_calls": None,
            "store": echo.get("store", True), "background": echo.get("background", False),
            "service_tier": "default", "metadata": echo.get("metadata") or {},
            "safety_identifier": None, "prompt_cache_key": None,
            "conversation": ({"id": echo["conversation"]} if echo.get("conversation") else None),
        }

    def _ended(self, final, output):
        prompt, completion = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
        usage = {"input_tokens": prompt, "output_tokens": completion,
                 "total_tokens": prompt + completion,
                 "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens_details": {"reasoning_tokens": 0}}
        if final.get("done_reason") == "length":  # OpenAI: incomplete, not completed
            body = self.response("incomplete", output, usage, reason="max_output_tokens")
        else:
            body = self.response("completed", output, usage)
        return self._end(body)

    def _end(self, body):
        if self.on_end:
            self.on_end(body)
        return body

    def failed(self, error, status="failed"):
        return self._end(self.response(status, self.items, error=error and {
            "code": "server_error", "message": error}))

    # Output items

    def _calls(self, calls):
        return [{"id": f"{self.call_prefix}_{i}", "type": "function_call", "status": "completed",
                 "call_id": call["id"] or f"call_{self.call_prefix[3:]}_{i}",
                 "name": call["function"]["name"],
                 "arguments": call["function"]["arguments"]}
                for i, call in enumerate(openai_wire.tool_calls(calls), self.output_index)]

    def _reasoning_item(self, thinking):
        return {"id": self.reasoning_id, "type": "reasoning",
                "summary": [{"type": "summary_text", "text": thinking}],
                "encrypted_content": thinking}

    def _message_item(self, text, status="completed"):
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant",
                "content": [output_text(text)] if status == "completed" else []}

    # Streaming (ResponsesStreamConverter)

    def _event(self, kind, **data):
        number, self.sequence = self.sequence, self.sequence + 1
        if number <= self.starting_after:  # the client has it already
            return ""
        data = {"type": kind, "sequence_number": number, **data}
        return f"event: {kind}\ndata: {dumps(data)}\n\n"

    def _open(self):
        if self.opened:
            return ""
        self.opened = True
        start = self.response("in_progress")
        return (self._event("response.created", response=start)
                + self._event("response.in_progress", response=start))

    def _process(self, message):
        out = self._open()
        thinking, content = message.get("thinking") or "", message.get("content") or ""
        calls = message.get("tool_calls")
        if thinking:
            if not self.thinking_started:
                self.thinking_started = True
                out += self._event("response.output_item.added", output_index=self.output_index,
                                   item={"id": self.reasoning_id, "type": "reasoning",
                                         "summary": []})
            self.thinking += thinking
            out += self._event("response.reasoning_summary_text.delta",
                               item_id=self.reasoning_id, output_index=self.output_index,
                               summary_index=0, delta=thinking)
        if calls:
            out += self._finish_reasoning()
            for item in self._calls(calls):
                index = self.output_index
                out += self._event("response.output_item.added", output_index=index,
                                   item={**item, "status": "in_progress", "arguments": ""})
                out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=index, delta=item["arguments"])
                out += self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=index, arguments=item["arguments"])
                out += self._event("response.output_item.done", output_index=index, item=item)
                self.items.append(item)
                self.output_index += 1
            self.calls_sent = True
        elif content and not self.calls_sent:
            out += self._finish_reasoning()
            if not self.text_started:
                self.text_started = True
                out += self._event("response.output_item.added", output_index=self.output_index,
                                   item=self._message_item("", "in_progress"))
                out += self._event("response.content_part.added", item_id=self.message_id,
                                   output_index=self.output_index, content_index=0,
                                   part=output_text(""))
            self.text += content
            out += self._event("response.output_text.delta", item_id=self.message_id,
                               output_index=self.output_index, content_index=0, delta=content,
                               logprobs=[])
        return out

    def _finish_reasoning(self):
        if not self.thinking_started:
            return ""
        self.thinking_started = False
        item = self._reasoning_item(self.thinking)
        self.items.append(item)
        index, self.output_index = self.output_index, self.output_index + 1
        return (self._event("response.reasoning_summary_text.done", item_id=self.reasoning_id,
                            output_index=index, summary_index=0, text=self.thinking)
                + self._event("response.output_item.done", output_index=index, item=item))

    def _finish_text(self):
        if not self.text_started or self.calls_sent:
            return ""
        item = self._message_item(self.text)
        self.items.append(item)
        index = self.output_index
        return (self._event("response.output_text.done", item_id=self.message_id,
                            output_index=index, content_index=0, text=self.text, logprobs=[])
                + self._event("response.content_part.done", item_id=self.message_id,
                              output_index=index, content_index=0, part=output_text(self.text))
                + self._event("response.output_item.done", output_index=index, item=item))

    def chunk(self, raw):
        return self._process(json.loads(raw).get("message") or {})

    def final(self, event):
        final = event["d"]
        out = self._process(final.get("message") or {})
        out += self._finish_reasoning() + self._finish_text()
        body = self._ended(final, self.items)
        kind = "response.completed" if body["status"] == "completed" else "response.incomplete"
        return out + self._event(kind, response=body)

    def error_line(self, error):
        return self._open() + self._event("response.failed", response=self.failed(error))

    # Whole (ToResponse)

    def output(self, reply):
        """The output items of a whole reply ({content, thinking, tool_calls})."""
        items = [self._reasoning_item(reply["thinking"])] if reply.get("thinking") else []
        self.output_index = len(items)
        if reply.get("tool_calls"):
            return items + self._calls(reply["tool_calls"])
        return items + [self._message_item(reply.get("content") or "")]

    def whole(self, event):
        body = self._ended(event["d"], self.output(event["reply"]))
        return Response(dumps(body) + "\n", mimetype="application/json")

    def failure(self, status, error):
        return openai_wire.failure(status, error)

    @classmethod
    def told_again(cls, body, starting_after):
        """A stored response's stream, from its output (one delta per item)."""
        echo = {**body, "format": body["text"]["format"],
                "conversation": (body.get("conversation") or {}).get("id")}
        wire = cls(body["model"], body["id"], echo, starting_after)
        message = {"content": "", "thinking": "", "tool_calls": []}
        for item in body["output"]:
            if item["type"] == "reasoning":
                message["thinking"] += "".join(s["text"] for s in item.get("summary") or ())
            elif item["type"] == "message":
                message["content"] += "".join(c.get("text", "") for c in item.get("content") or ())
            elif item["type"] == "function_call":
                message["tool_calls"].append({"id": item["call_id"], "function": {
                    "name": item["name"], "arguments": json.loads(item["arguments"] or "{}")}})
        usage = body.get("usage") or {}
        final = {"message": message, "prompt_eval_count": usage.get("input_tokens", 0),
                 "eval_count": usage.get("output_tokens", 0),
                 "done_reason": "length" if body["status"] == "incomplete" else "stop"}
        if body["status"] in ("completed", "incomplete"):
            yield wire.final({"d": final})
        else:
            yield wire.error_line((body.get("error") or {}).get("message") or body["status"])
