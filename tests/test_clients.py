"""The client matrix: the newest release of each official Ollama client and of the major
integrations (pinned in setup.cfg and tests/js/package.json, printed in the run's header),
each through chat, streaming, tools, structured output and embeddings against the stack.

The model is tiny: a tools test checks that the tools reach the model (its prompt grows) and
that the client parses the answer, not that the model calls them well. Structured output is
enforced by the engine's grammar, so that answer must parse against the schema.
"""
import json
import os
import subprocess
import uuid

import ollama
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MODEL, OPTIONS, serve
from tests.test_compat import JS_DIR, node_binary

# Haystack reads this when it is imported; the suite sends nothing anywhere.
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
TOOL_QUESTION = [{"role": "user", "content": "What is 2+2? Use the add tool."}]
EMBED_MODEL = "all-minilm"
# Room for the grammar to close the object; it stops the model there.
JSON_OPTIONS = {**OPTIONS, "num_predict": 40}


class Answer(BaseModel):
    answer: int


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"]}


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer
        b: The second integer
    """
    return a + b


ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "required": ["a", "b"],
                   "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}


def tool_calls_named_add(calls):
    """A model may or may not call the tool; a call it makes names the one it was given."""
    assert all(name == "add" for name in calls), calls


# ollama (PyPI)

def test_ollama_python_chat_and_stream(stack):
    client = ollama.Client(host=stack.url)
    whole = client.chat(MODEL, messages=QUESTION, options=OPTIONS)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    parts = list(client.chat(MODEL, messages=QUESTION, options=OPTIONS, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_ollama_python_tools(stack):
    client = ollama.Client(host=stack.url)
    reply = client.chat(MODEL, messages=TOOL_QUESTION, tools=[add], options=OPTIONS)
    plain = client.chat(MODEL, messages=TOOL_QUESTION, options=OPTIONS)
    assert reply.done and reply.prompt_eval_count > plain.prompt_eval_count
    tool_calls_named_add([c.function.name for c in reply.message.tool_calls or []])


def test_ollama_python_structured_output(stack):
    client = ollama.Client(host=stack.url)
    reply = client.chat(MODEL, messages=QUESTION, format=Answer.model_json_schema(),
                        options=JSON_OPTIONS)
    Answer.model_validate_json(reply.message.content)


def test_ollama_python_embed_and_embeddings(stack):
    client = ollama.Client(host=stack.url)
    embed = client.embed(MODEL, input=["hello", "world"])
    assert len(embed.embeddings) == 2 and len(embed.embeddings[0]) > 100
    legacy = client.embeddings(MODEL, prompt="hello")
    assert len(legacy.embedding) == len(embed.embeddings[0])
    assert len(client.embed(EMBED_MODEL, input="hello").embeddings[0]) == 384


# ollama (npm): tests/js/client.mjs runs the same matrix and prints what it saw.

@pytest.fixture(scope="module")
def npm_run(stack):
    out = subprocess.run([node_binary(), "client.mjs", stack.url, MODEL], cwd=JS_DIR,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_ollama_npm_client(npm_run):
    result = npm_run
    assert result["done"] and result["content"] and MODEL in result["models"]
    assert result["architecture"] == "llama"
    assert result["content"] == result["chat"]  # streamed and whole: same seed, same reply
    Answer.model_validate_json(result["structured"])
    assert result["embed"] == [2, 384]


def test_ollama_npm_tools(npm_run):
    tools = npm_run["tools"]
    assert "error" not in tools, tools["error"]
    assert tools["prompt_eval_count"] > tools["plain_prompt_eval_count"]
    tool_calls_named_add(tools["calls"])


# openai (PyPI), on /v1

@pytest.fixture
def openai_client(stack):
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="ollama")


SAMPLING = {"temperature": 0, "seed": 42, "max_tokens": 8}


def test_openai_chat_and_stream(stack, openai_client):
    sid = str(uuid.uuid4())
    done = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, **SAMPLING,
                                                 extra_headers={"X-Session-ID": sid})
    assert done.choices[0].message.content and done.usage.completion_tokens > 0
    assert [r.role for r in stack.rows(sid)] == ["user", "assistant"]
    parts = list(openai_client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                       **SAMPLING, stream=True))
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == done.choices[0].message.content  # same seed, same reply
    assert parts[-1].choices[0].finish_reason in ("stop", "length")


def test_openai_tools(openai_client):
    reply = openai_client.chat.completions.create(model=MODEL, messages=TOOL_QUESTION,
                                                  tools=[ADD_TOOL], **SAMPLING)
    plain = openai_client.chat.completions.create(model=MODEL, messages=TOOL_QUESTION,
                                                  **SAMPLING)
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    tool_calls_named_add([c.function.name for c in choice.message.tool_calls or []])


def test_openai_structured_output(openai_client):
    parsed = openai_client.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Answer, temperature=0, seed=42,
        max_tokens=40)
    assert isinstance(parsed.choices[0].message.parsed, Answer)


def test_openai_embeddings(openai_client):
    vectors = openai_client.embeddings.create(model=MODEL, input=["hi", "there"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 100
    floats = openai_client.embeddings.create(model=EMBED_MODEL, input="hi",
                                             encoding_format="float")
    assert len(floats.data[0].embedding) == 384


# LangChain: langchain-ollama

def chat_ollama(stack, num_predict=OPTIONS["num_predict"]):
    from langchain_ollama import ChatOllama

    return ChatOllama(model=MODEL, base_url=stack.url, temperature=0, seed=42,
                      num_predict=num_predict)


def test_langchain_chat_and_stream(stack):
    llm = chat_ollama(stack)
    whole = llm.invoke("What is 2+2?")
    streamed = "".join(chunk.content for chunk in llm.stream("What is 2+2?"))
    assert whole.content and streamed == whole.content
    assert whole.usage_metadata["output_tokens"] > 0


def test_langchain_tools(stack):
    llm = chat_ollama(stack)
    reply = llm.bind_tools([add]).invoke(TOOL_QUESTION[0]["content"])
    plain = llm.invoke(TOOL_QUESTION[0]["content"])
    assert reply.usage_metadata["input_tokens"] > plain.usage_metadata["input_tokens"]
    tool_calls_named_add([c["name"] for c in reply.tool_calls])


def test_langchain_structured_output(stack):
    llm = chat_ollama(stack, num_predict=JSON_OPTIONS["num_predict"])
    structured = llm.with_structured_output(Answer, method="json_schema")
    assert isinstance(structured.invoke("What is 2+2?"), Answer)


def test_langchain_embeddings(stack):
    from langchain_ollama import OllamaEmbeddings

    embedder = OllamaEmbeddings(model=EMBED_MODEL, base_url=stack.url)
    docs = embedder.embed_documents(["hello", "world"])
    assert len(docs) == 2 and len(docs[0]) == 384
    assert len(embedder.embed_query("hello")) == 384


# LlamaIndex: llama-index-llms-ollama and llama-index-embeddings-ollama

def llama_index_llm(stack, **kwargs):
    from llama_index.llms.ollama import Ollama

    return Ollama(model=MODEL, base_url=stack.url, temperature=0, request_timeout=120,
                  additional_kwargs={k: v for k, v in OPTIONS.items() if k != "temperature"},
                  **kwargs)


def test_llama_index_chat_and_stream(stack):
    from llama_index.core.llms import ChatMessage

    llm = llama_index_llm(stack)
    messages = [ChatMessage(role="user", content="What is 2+2?")]
    whole = llm.chat(messages)
    assert whole.message.content and whole.raw["done"]
    streamed = list(llm.stream_chat(messages))
    assert streamed[-1].message.content == whole.message.content
    assert "".join(part.delta for part in streamed) == whole.message.content


def test_llama_index_defaults_chat(stack):
    """As most users make it: no temperature (the client sends `"temperature": null`)."""
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.ollama import Ollama

    llm = Ollama(model=MODEL, base_url=stack.url, additional_kwargs={"num_predict": 8})
    assert llm.chat([ChatMessage(role="user", content="Hi")]).message.content


def test_llama_index_tools(stack):
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool

    llm = llama_index_llm(stack)
    reply = llm.chat_with_tools([FunctionTool.from_defaults(add)],
                                user_msg=TOOL_QUESTION[0]["content"])
    plain = llm.chat([ChatMessage(role="user", content=TOOL_QUESTION[0]["content"])])
    assert reply.raw["prompt_eval_count"] > plain.raw["prompt_eval_count"]
    calls = llm.get_tool_calls_from_response(reply, error_on_no_tool_call=False)
    tool_calls_named_add([c.tool_name for c in calls])


def test_llama_index_structured_output(stack):
    from llama_index.core.prompts import PromptTemplate

    llm = llama_index_llm(stack)
    llm.additional_kwargs["num_predict"] = JSON_OPTIONS["num_predict"]
    answer = llm.structured_predict(Answer, PromptTemplate("What is {sum}?"), sum="2+2")
    assert isinstance(answer, Answer)


def test_llama_index_embeddings(stack):
    from llama_index.embeddings.ollama import OllamaEmbedding

    embedder = OllamaEmbedding(model_name=EMBED_MODEL, base_url=stack.url)
    assert len(embedder.get_query_embedding("hello")) == 384
    texts = embedder.get_text_embedding_batch(["hello", "world"])
    assert len(texts) == 2 and len(texts[1]) == 384


# Haystack: ollama-haystack

def haystack_generator(stack, **kwargs):
    from haystack_integrations.components.generators.ollama import OllamaChatGenerator

    return OllamaChatGenerator(model=MODEL, url=stack.url, generation_kwargs=dict(OPTIONS),
                               **kwargs)


def test_haystack_chat_and_stream(stack):
    from haystack.dataclasses import ChatMessage

    messages = [ChatMessage.from_user("What is 2+2?")]
    whole = haystack_generator(stack).run(messages)["replies"][0]
    assert whole.text and whole.meta["finish_reason"] in ("stop", "length")
    chunks = []
    streamed = haystack_generator(stack, streaming_callback=chunks.append).run(messages)
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == whole.text
    assert streamed["replies"][0].text == whole.text


def test_haystack_tools(stack):
    from haystack.dataclasses import ChatMessage
    from haystack.tools import create_tool_from_function

    messages = [ChatMessage.from_user(TOOL_QUESTION[0]["content"])]
    reply = haystack_generator(stack, tools=[create_tool_from_function(add)]).run(
        messages)["replies"][0]
    plain = haystack_generator(stack).run(messages)["replies"][0]
    assert reply.meta["usage"]["prompt_tokens"] > plain.meta["usage"]["prompt_tokens"]
    tool_calls_named_add([c.tool_name for c in reply.tool_calls])


def test_haystack_structured_output(stack):
    from haystack.dataclasses import ChatMessage

    generator = haystack_generator(stack, response_format=SCHEMA)
    generator.generation_kwargs["num_predict"] = JSON_OPTIONS["num_predict"]
    reply = generator.run([ChatMessage.from_user("What is 2+2?")])["replies"][0]
    Answer.model_validate_json(reply.text)


def test_haystack_embeddings(stack):
    from haystack import Document
    from haystack_integrations.components.embedders.ollama import (
        OllamaDocumentEmbedder, OllamaTextEmbedder)

    text = OllamaTextEmbedder(model=EMBED_MODEL, url=stack.url).run("hello")
    assert len(text["embedding"]) == 384
    docs = OllamaDocumentEmbedder(model=EMBED_MODEL, url=stack.url).run(
        [Document(content="hello"), Document(content="world")])["documents"]
    assert [len(d.embedding) for d in docs] == [384, 384]


# ollama-python reads OLLAMA_HOST and OLLAMA_API_KEY: an unmodified client carries a key.

KEY = "key-env-0123456789"


@pytest.fixture(scope="module")
def keyed_url(stack):
    server, url = serve(stack.app_with({"API_KEYS": f"env={KEY}"}))
    yield url
    server.shutdown()


def test_ollama_python_sends_ollama_api_key_as_bearer(keyed_url, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", keyed_url)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client().chat(MODEL, messages=QUESTION, options=OPTIONS)
    assert refused.value.status_code == 401
    monkeypatch.setenv("OLLAMA_API_KEY", "not-the-key-0123456789")
    with pytest.raises(ollama.ResponseError) as wrong:
        ollama.Client().list()
    assert wrong.value.status_code == 401
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    assert ollama.Client().chat(MODEL, messages=QUESTION, options=OPTIONS).message.content
    assert MODEL in [m.model for m in ollama.Client().list().models]
    # The integrations built on ollama-python carry it too.
    from haystack_integrations.components.embedders.ollama import OllamaTextEmbedder
    from langchain_ollama import ChatOllama
    from llama_index.embeddings.ollama import OllamaEmbedding

    assert ChatOllama(model=MODEL, base_url=keyed_url, num_predict=4).invoke("Hi").content
    embedding = OllamaEmbedding(model_name=EMBED_MODEL, base_url=keyed_url)
    assert len(embedding.get_query_embedding("hi")) == 384
    assert len(OllamaTextEmbedder(model=EMBED_MODEL, url=keyed_url).run("hi")["embedding"]) == 384
