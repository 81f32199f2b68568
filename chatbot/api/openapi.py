"""GET /api/openapi.json: an OpenAPI 3.1 description of every route the app serves.

Request schemas are loose on purpose (unknown fields allowed, as Ollama ignores them), so any
valid Ollama or OpenAI request validates. tests/test_openapi.py checks that every URL rule of
the app is described here, and tests/test_fuzz.py fuzzes the routes from this document.

Its size is earned: it is the document itself, data more than code."""
from flask import Blueprint, jsonify

from chatbot.api.auth import OPEN, PAGE_FILES  # the routes that never ask for a key
from chatbot.engine import options

bp = Blueprint("openapi", __name__)

ROLES = ["system", "user", "assistant", "tool"]
STR, BOOL, INT, NUM, OBJ = ({"type": t} for t in ("string", "boolean", "integer", "number",
                                                  "object"))
ANY = {}  # any JSON value
NULL = {"type": "null"}
UUID = {"type": "string", "format": "uuid"}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required=(), **props):
    """An object with these properties; other properties are allowed."""
    out = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def array(items):
    return {"type": "array", "items": items}


def one_of(*schemas):
    return {"anyOf": list(schemas)}


def nullable(schema):
    return one_of(schema, NULL)  # OpenAI clients send null for "not set"


OPTION_SCHEMAS = {options.INT: INT, options.FLOAT: NUM, options.BOOL: BOOL,
                  options.ARRAY: array(STR)}
KEEP_ALIVE = one_of(STR, NUM)
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
FORMAT = one_of({"type": "string", "enum": ["json"]}, OBJ)
THINK = one_of(BOOL, {"type": "string", "enum": ["high", "medium", "low", "max"]})
TURN = dict(stream=BOOL, format=FORMAT, options=ref("Options"), think=THINK,
            keep_alive=KEEP_ALIVE, session_id=UUID, resumable=BOOL, truncate=BOOL, shift=BOOL,
            logprobs=BOOL, top_logprobs={"type": "integer", "minimum": 0, "maximum": 20})

SCHEMAS = {
    "Error": obj(["error"], error=STR),
    "OpenAIError": obj(["error"], error=obj(["message"], message=STR, type=STR, param=ANY,
                                            code=ANY)),
    # Probabilities are described as such (the web does not refuse others; the engine must
    # survive them), so that the fuzzing sends values just outside too.
    # Ollama's option types (null is "not set", as its clients send it).
    "Options": obj(**{k: nullable(PROBABILITY if k in options.PROBABILITIES
                                  else OPTION_SCHEMAS[kind])
                      for k, kind in options.TYPES.items()}),
    "Message": obj(["role"], role={"type": "string", "enum": ROLES}, content=STR,
                   images=array(STR), tool_calls=array(OBJ), thinking=STR, tool_name=STR,
                   tool_call_id=STR),
    "ChatRequest": obj(["model"], model=STR, messages=array(ref("Message")), tools=array(OBJ),
                       **TURN),
    "GenerateRequest": obj(["model"], model=STR, prompt=STR, suffix=STR, system=STR,
                           template=STR, context=array(INT), raw=BOOL, images=array(STR),
                           **TURN),
    "ModelRequest": obj(model=STR, name=STR, verbose=BOOL, insecure=BOOL, stream=BOOL),
    "CreateRequest": obj(model=STR, name=STR, **{"from": STR}, files=OBJ, adapters=OBJ,
                         template=STR, license=one_of(STR, array(STR)), system=STR,
                         parameters=OBJ, messages=array(ref("Message")), quantize=STR,
                         stream=BOOL),
    "CopyRequest": obj(["source", "destination"], source=STR, destination=STR),
    "EmbedRequest": obj(["model"], model=STR, input=one_of(STR, array(STR)), truncate=BOOL,
                        dimensions=INT, options=ref("Options"), keep_alive=KEEP_ALIVE),
    "EmbeddingsRequest": obj(["model"], model=STR, prompt=STR, options=ref("Options"),
                             keep_alive=KEEP_ALIVE),
    "OpenAIMessage": obj(["role"], role={"type": "string", "enum": ROLES}, name=STR,
                         content=one_of(STR, NULL, array(obj(["type"], type=STR, text=STR,
                                                                 image_url=obj(url=STR)))),
                         tool_calls=array(obj(function=obj(["name"], name=STR, arguments=STR)))),
    "OpenAISampling": obj(**{k: nullable(t) for k, t in (
        ("temperature", NUM), ("top_p", NUM), ("seed", INT), ("stop", one_of(STR, array(STR))),
        ("max_tokens", INT), ("max_completion_tokens", INT), ("frequency_penalty", NUM),
        ("presence_penalty", NUM), ("stream_options", obj(include_usage=BOOL)))}, stream=BOOL,
        resumable=BOOL),
    "ChatCompletionRequest": {"allOf": [ref("OpenAISampling"), obj(
        ["model", "messages"], model=STR, messages=array(ref("OpenAIMessage")), tools=array(OBJ),
        response_format=obj(type={"type": "string", "enum": ["text", "json_object", "json_schema"]},
                            json_schema=obj(schema=OBJ)))]},
    "CompletionRequest": {"allOf": [ref("OpenAISampling"), obj(
        ["model"], model=STR, prompt=one_of(STR, array(STR)), suffix=STR)]},
    "AnthropicError": obj(["type", "error"], type={"type": "string", "enum": ["error"]},
                          error=obj(["type", "message"], type=STR, message=STR)),
    "AnthropicBlock": obj(["type"], type={"type": "string", "enum": [
        "text", "image", "tool_use", "tool_result", "thinking"]}, text=STR, thinking=STR,
        source=obj(type=STR, media_type=STR, data=STR), id=STR, name=STR, input=OBJ,
        tool_use_id=STR, content=one_of(STR, array(OBJ))),
    "CountTokensRequest": obj(
        ["model", "messages"], model=STR,
        messages=array(obj(["role", "content"],
                           role={"type": "string", "enum": ["user", "assistant"]},
                           content=one_of(STR, array(ref("AnthropicBlock"))))),
        system=one_of(STR, array(obj(["type", "text"], type=STR, text=STR))),
        tools=array(obj(["name"], name=STR, description=STR, input_schema=OBJ)),
        thinking=obj(type=STR, budget_tokens=INT)),
    "MessagesRequest": {"allOf": [ref("CountTokensRequest"), obj(
        ["max_tokens"], max_tokens={"type": "integer", "minimum": 1}, stream=BOOL,
        temperature=NUM, top_p=NUM, top_k=INT, stop_sequences=array(STR),
        tool_choice=obj(type=STR, name=STR), metadata=OBJ, resumable=BOOL)]},
    "OpenAIEmbeddingsRequest": obj(["model", "input"], model=STR, input=one_of(STR, array(STR))),
    # Responses: input as text or items (messages with text/image parts, function calls and
    # their outputs, reasoning); tools flat ({type: function, name, parameters}).
    "ResponsesRequest": obj(
        ["model"], model=STR, input=one_of(STR, array(obj(
            type={"type": "string", "enum": ["message", "function_call", "function_call_output",
                                             "reasoning"]},
            role={"type": "string", "enum": ["user", "assistant", "system", "developer"]},
            content=one_of(STR, array(obj(["type"], type={"type": "string", "enum": [
                "input_text", "output_text", "input_image"]}, text=STR, image_url=STR))),
            call_id=STR, name=STR, arguments=STR, output=STR, encrypted_content=STR))),
        instructions=nullable(STR), previous_response_id=nullable(STR),
        conversation=nullable(one_of(UUID, obj(id=UUID))),
        tools=array(obj(["type", "name"], type={"type": "string",
                                                "enum": ["function", "namespace"]},
                        name=STR, description=nullable(STR), parameters=nullable(OBJ))),
        tool_choice=ANY, text=obj(format=obj(type=STR, schema=OBJ)),
        reasoning=obj(effort=nullable(STR), summary=nullable(STR)),
        **{k: nullable(t) for k, t in (("temperature", NUM), ("top_p", NUM), ("seed", INT),
                                       ("max_output_tokens", INT), ("stream", BOOL),
                                       ("store", BOOL), ("background", BOOL))},
        metadata=nullable(OBJ), resumable=BOOL),
    "SessionPatch": {**obj(["title"], title={"type": ["string", "null"], "maxLength": 200}),
                     "additionalProperties": False},
    "SessionExport": obj(version={"type": "integer", "enum": [1]}, id=UUID,
                         title={"type": ["string", "null"], "maxLength": 200},
                         created_at={"type": "string", "format": "date-time"}, meta=OBJ,
                         threads={"type": "object", "additionalProperties": array(obj(
                             ["role"], role={"type": "string", "enum": ROLES}, content=STR,
                             status={"type": "string",
                                     "enum": ["ok", "cancelled", "failed", "lost"]},
                             request_id=STR, created_at=STR, images=array(STR),
                             tool_calls=array(OBJ), thinking=STR, tool_name=STR))},
                         # Shown, not imported (CONTEXT_STRATEGY=summarize).
                         summaries=array(obj(model=STR, content=STR, first_seq=INT,
                                             last_seq=INT))),
    "DocumentText": obj(["content"], name=STR, content=STR,
                        content_type={"type": "string",
                                      "enum": ["text/plain", "text/markdown"]}),
    "DocumentFile": obj(["file"], file={"type": "string", "format": "binary"}, name=STR),
}


JSON, NDJSON, SSE, TEXT = ("application/json", "application/x-ndjson", "text/event-stream",
                           "text/plain")


def body(schema, media=JSON, required=True):
    return {"required": required, "content": {media: {"schema": schema}}}


def ok(*media, schema=ANY, status="200"):
    answer = {"description": "OK"}
    if media:
        answer["content"] = {m: {"schema": schema} for m in media}
    return {status: answer}


def error(shape="Error"):
    return {"description": "error", "content": {JSON: {"schema": ref(shape)}}}


def errors(*codes, shape="Error"):
    return {str(c): error(shape) for c in codes}


PASSTHROUGH = {"default": error()}  # whatever the upstream answers, in Ollama's error shape


def op(summary, responses, request=None, params=()):
    out = {"summary": summary, "responses": responses}
    if request:
        out["requestBody"] = request
    if params:
        out["parameters"] = list(params)
    return out


def path_param(name, schema=STR):
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query(name, schema=STR):
    return {"name": name, "in": "query", "required": False, "schema": schema}


def header(name, schema=STR):
    return {"name": name, "in": "header", "required": False, "schema": schema}


TURN_HEADERS = (header("X-Session-ID", UUID), header("X-Request-ID"))
PAGE = {"type": "integer", "format": "int64", "minimum": 1}  # per_page above 100 is capped
PAGING = (query("page", PAGE), query("per_page", PAGE), query("model"))
SID = path_param("sid", UUID)


def turn(summary, request, shape="Error", stream=NDJSON):
    return op(summary, {**ok(JSON, stream), **errors(400, 404, 503, shape=shape)},
              body(ref(request)), TURN_HEADERS)


def model_op(summary, request, *media):
    return op(summary, {**ok(*media), **PASSTHROUGH}, body(ref(request)))


PATHS = {
    "/": {"get": op("Ollama is running (a browser, preferring text/html, is redirected to "
                    "/chat)", {**ok(TEXT, schema=STR), "302": {"description": "to /chat"}}),
          "head": op("Ollama is running", {"200": {"description": "OK"}})},
    "/api/version": {"get": op("Upstream version", {**ok(JSON, schema=obj(version=STR)),
                                                    **PASSTHROUGH})},
    "/api/status": {"get": op("Cloud status: chatbot serves local models only",
                              ok(JSON, schema=obj(cloud=obj(disabled=BOOL, source=STR))))},
    "/api/tags": {"get": op("Models available", {**ok(JSON, schema=obj(models=array(OBJ))),
                                                 **PASSTHROUGH})},
    "/api/ps": {"get": op("Models loaded; `queued`: models requests wait in line to load",
                          {**ok(JSON, schema=obj(models=array(OBJ), queued=array(obj(
                              name=STR, model=STR, requests=INT)))), **PASSTHROUGH})},
    "/api/show": {"post": model_op("A model's details", "ModelRequest", JSON)},
    "/api/chat": {"post": turn("Chat (queued; stored in the session)", "ChatRequest")},
    "/api/generate": {"post": turn("Generate (queued; stored in the session)", "GenerateRequest")},
    "/api/embed": {"post": model_op("Embeddings", "EmbedRequest", JSON)},
    "/api/embeddings": {"post": model_op("Embedding (legacy)", "EmbeddingsRequest", JSON)},
    "/api/pull": {"post": model_op("Pull a model", "ModelRequest", JSON, NDJSON)},
    "/api/push": {"post": model_op("Push a model", "ModelRequest", JSON, NDJSON)},
    "/api/create": {"post": model_op("Create a model", "CreateRequest", JSON, NDJSON)},
    "/api/copy": {"post": model_op("Copy a model", "CopyRequest")},
    "/api/delete": {"delete": model_op("Delete a model", "ModelRequest")},
    "/api/blobs/{digest}": {
        "head": op("Is the blob there", {"200": {"description": "present"}, **PASSTHROUGH},
                   params=[path_param("digest")]),
        "post": op("Upload a blob", {"201": {"description": "created"}, **PASSTHROUGH},
                   body({"type": "string", "format": "binary"}, "application/octet-stream"),
                   [path_param("digest")])},
    "/v1/chat/completions": {"post": turn("OpenAI chat completion", "ChatCompletionRequest",
                                          "OpenAIError", SSE)},
    "/v1/completions": {"post": turn("OpenAI completion", "CompletionRequest", "OpenAIError", SSE)},
    "/v1/embeddings": {"post": op("OpenAI embeddings", {**ok(JSON), **errors(400, 404, 503,
                                                                             shape="OpenAIError")},
                                  body(ref("OpenAIEmbeddingsRequest")))},
    "/v1/responses": {"post": turn(
        "OpenAI Responses: queued like every chat and stored in a session; previous_response_id "
        "continues one; background answers at once", "ResponsesRequest", "OpenAIError", SSE)},
    "/v1/responses/{response_id}": {
        "get": op("A response: kept once ended, or its status while it waits or runs; with "
                  "stream=true its events again, after starting_after",
                  {**ok(JSON, SSE), **errors(400, 404, shape="OpenAIError")},
                  params=[path_param("response_id"),
                          query("stream", {"type": "string", "enum": ["true", "false"]}),
                          query("starting_after", {"type": "integer", "minimum": 0})]),
        "delete": op("Delete a response (its turn stays in its session)",
                     {**ok(JSON, schema=obj(id=STR, deleted=BOOL)),
                      **errors(400, 404, shape="OpenAIError")},
                     params=[path_param("response_id")])},
    "/v1/responses/{response_id}/cancel": {"post": op(
        "Cancel a response that waits or runs",
        {**ok(JSON), **errors(400, 404, shape="OpenAIError")},
        params=[path_param("response_id")])},
    "/v1/messages": {"post": turn("Anthropic message (queued; X-Session-ID continues a "
                                  "session)", "MessagesRequest", "AnthropicError", SSE)},
    "/v1/messages/count_tokens": {"post": op(
        "Ollama's estimate of a message request's input tokens (characters / 4); nothing is "
        "queued", {**ok(JSON, schema=obj(["input_tokens"], input_tokens=INT)),
                   **errors(400, shape="AnthropicError")}, body(ref("CountTokensRequest")))},
    "/v1/models": {"get": op("Model list: OpenAI's, or Anthropic's when the request carries "
                             "anthropic-version", {**ok(JSON, schema=obj(data=array(OBJ))),
                                                   **errors(503, shape="OpenAIError")})},
    "/v1/models/{model}": {"get": op("One model (OpenAI's or Anthropic's shape, as the list)", {
        **ok(JSON, schema=obj(id=STR)), **errors(404, 503, shape="OpenAIError")},
        params=[path_param("model")])},
    "/api/queue": {"get": op("Every queue: depth, running and waiting requests",
                             ok(JSON, schema=obj(queues=array(OBJ))))},
    "/api/queue/{request_id}": {
        "get": op("One request's state and position",
                  {**ok(JSON, schema=obj(state=STR, phase=STR)), **errors(404)},
                  params=[path_param("request_id")]),
        "delete": op("Cancel a request", {**ok(JSON, schema=obj(state=STR)), **errors(404)},
                     params=[path_param("request_id")])},
    "/api/events": {"get": op("Server-Sent Events of a request (channel=<request id>) or of "
                              "the queue; Last-Event-ID replays a request's tokens after it",
                              {**ok(SSE, schema=STR), **errors(400, 404)},
                              params=[query("channel"), header("Last-Event-ID")])},
    "/api/requests/{request_id}/stream": {
        "get": op("The rest of a resumable reply, as its first call answered it: every chunk "
                  "after the first `after`, then live to the end",
                  {**ok(NDJSON, JSON, SSE), **errors(400, 404)},
                  params=[path_param("request_id"), query("after", {"type": "integer",
                                                                    "minimum": 0})])},
    "/api/sessions": {"get": op("Sessions, most recently used first", {
        **ok(JSON, schema=obj(sessions=array(OBJ), page=INT, per_page=INT, total=INT)),
        **errors(400)},
        params=[*PAGING, query("archived", {"type": "string", "enum": ["true", "false"]}),
                query("q")])},
    "/api/sessions/import": {"post": op("Import a session export", {
        **ok(JSON, schema=obj(id=UUID, messages=INT), status="201"), **errors(400, 409)},
        body(ref("SessionExport")))},
    "/api/sessions/{sid}": {
        "get": op("A session and a page of its messages", {**ok(JSON), **errors(400, 404)},
                  params=[SID, *PAGING]),
        "patch": op("Rename a session", {**ok(JSON), **errors(400, 404)},
                    body(ref("SessionPatch")), [SID]),
        "delete": op("Delete a session and its messages", {**ok(JSON), **errors(400, 404)},
                     params=[SID])},
    "/api/sessions/{sid}/branch": {"post": op(
        "Make the path through a message (an edit's or a regenerate's branch) the active one",
        {**ok(JSON), **errors(400, 404)},
        body({"type": "object", "required": ["message_id"],
              "properties": {"message_id": {"type": "integer", "minimum": 1}}}), [SID])},
    "/api/sessions/{sid}/archive": {"post": op("Archive a session",
                                               {**ok(JSON), **errors(400, 404)}, params=[SID])},
    "/api/sessions/{sid}/restore": {"post": op("Restore a session",
                                               {**ok(JSON), **errors(400, 404)}, params=[SID])},
    "/api/sessions/{sid}/export": {"get": op("Export a session", {
        **ok(JSON, "text/markdown"), **errors(400, 404)},
        params=[SID, query("format", {"type": "string", "enum": ["json", "markdown", "md"]})])},
    "/api/sessions/{sid}/documents": {
        "post": op("Add a document (Markdown, text or PDF): chunked, embedded, searched before "
                   "each turn", {**ok(JSON, schema=obj(id=INT, name=STR, chunks=INT),
                                    status="201"), **errors(400, 404, 413, 415, 503)},
                   {"required": True, "content": {
                       JSON: {"schema": ref("DocumentText")},
                       "multipart/form-data": {"schema": ref("DocumentFile")}}}, [SID]),
        "get": op("A session's documents", {**ok(JSON, schema=obj(documents=array(OBJ))),
                                            **errors(400, 404)}, params=[SID])},
    "/api/sessions/{sid}/documents/{doc_id}": {"delete": op(
        "Remove a document and its chunks", {**ok(JSON), **errors(400, 404)},
        params=[SID, path_param("doc_id", INT)])},
    "/api/openapi.json": {"get": op("This document", ok(JSON, schema=OBJ))},
    "/healthz": {"get": op("The process is up", ok(JSON, schema=obj(status=STR)))},
    "/readyz": {"get": op("Redis, the database, an upstream and a worker answer", {
        **ok(JSON, schema=obj(status=STR, failed=array(STR), checks=OBJ)),
        "503": {"description": "not ready", "content": {JSON: {"schema": OBJ}}}})},
    "/metrics": {"get": op("Prometheus metrics", ok(TEXT, schema=STR))},
    "/static/{filename}": {"get": op("Static files (none are shipped)", {
        "200": {"description": "the file"}, **errors(404)}, params=[path_param("filename")])},
    "/chat": {"get": op("The chat page", ok("text/html", schema=STR))},
    PAGE_FILES + "{filename}": {"get": op("The chat page's scripts and styles", {
        "200": {"description": "the file"}, **errors(404)}, params=[path_param("filename")])},
}

def finish(paths):
    """Any route may also answer an unexpected error (500, with an error id), an unreachable
    upstream or a full queue (503), a missing key (401) and so on: Ollama's error shape, or
    under /v1 OpenAI's for a refusal, Anthropic's on /v1/messages (and on /v1/models when asked with
    anthropic-version). The open routes never ask for a key."""
    for path, item in paths.items():
        shape = ref("Error")
        if path.startswith("/v1/messages"):
            shape = ref("AnthropicError")
        elif path.startswith("/v1/"):
            shape = one_of(ref("OpenAIError"), ref("AnthropicError"), ref("Error"))
        for operation in item.values():
            operation["responses"].setdefault("default", {
                "description": "error", "content": {JSON: {"schema": shape}}})
            if path in OPEN or path.startswith(PAGE_FILES):
                operation["security"] = [{}]
    return paths


DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "chatbot", "version": "0.1.0",
             "description": "An Ollama-compatible chat server with server-side sessions and a "
                            "fair queue. Errors are {\"error\": \"...\"} (OpenAI's shape for "
                            "refused requests under /v1, Anthropic's on /v1/messages); "
                            "unexpected ones carry an error id. "
                            "Once API keys exist, every route but " + ", ".join(sorted(OPEN))
                            + " (and /metrics with METRICS_OPEN) needs `Authorization: Bearer "
                            "KEY` or `x-api-key: KEY` (else 401); model management needs an "
                            "admin key (403)."},
    "paths": finish(PATHS),
    "components": {"schemas": SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                       "apiKey": {"type": "apiKey", "in": "header",
                                                  "name": "x-api-key"}}},
    "security": [{}, {"bearer": []}, {"apiKey": []}],  # none needed while no key exists
}


@bp.get("/api/openapi.json")
def document():
    return jsonify(DOCUMENT)
