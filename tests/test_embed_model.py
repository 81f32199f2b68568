"""all-minilm, the bundled embedding model, through the real engine (`engine_url`)."""
import math

import ollama
import pytest
import requests

NAME = "all-minilm:latest"
SIMILAR = [  # (anchor, a paraphrase, an unrelated sentence)
    ("How do I reset my password?", "I forgot my login credentials and need a new password.",
     "The recipe needs two cups of flour and an egg."),
    ("A man is playing a guitar on stage.", "Someone strums an acoustic guitar at a concert.",
     "The central bank raised interest rates again."),
    ("The cat sleeps on the warm windowsill.", "A kitten naps in the sun by the window.",
     "Compile the kernel with the new configuration."),
]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) *
                                                        sum(y * y for y in b))


def embed(url, body, status=200):
    r = requests.post(url + "/api/embed", json={"model": NAME, **body}, timeout=120)
    assert r.status_code == status, r.text
    return r.json()


def test_listed_and_shown_as_ollama_does(engine_url):
    tags = {m["name"]: m for m in requests.get(engine_url + "/api/tags", timeout=60).json()
            ["models"]}
    entry = tags[NAME]
    assert entry["details"]["family"] == "bert" and entry["details"]["format"] == "gguf"
    assert entry["details"]["quantization_level"] == "F16" and len(entry["digest"]) == 64
    show = requests.post(engine_url + "/api/show", json={"model": "all-minilm"}, timeout=30)
    assert show.status_code == 200
    assert show.json()["model_info"]["bert.embedding_length"] == 384
    assert show.json()["capabilities"] == ["embedding"]


def test_embed_gives_unit_vectors_of_384_in_ollama_shape(engine_url):
    texts = ["hello world", "The quick brown fox jumps over the lazy dog."]
    for name in ("all-minilm", NAME):
        body = embed(engine_url, {"model": name, "input": texts})
        assert list(body) == ["model", "embeddings", "total_duration", "load_duration",
                              "prompt_eval_count"]
        assert body["model"] == name and len(body["embeddings"]) == 2
        assert all(len(v) == 384 for v in body["embeddings"])
        assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-4) for v in body["embeddings"])
        # WordPiece: [CLS] hello world [SEP], and [CLS] + 9 words + "." + [SEP]
        assert body["prompt_eval_count"] == 4 + 12
        assert body["total_duration"] >= body["load_duration"] >= 0
    one = embed(engine_url, {"input": texts[1]})["embeddings"][0]
    assert cosine(one, body["embeddings"][1]) > 0.9999  # batched or alone, the same vector


def test_paraphrases_rank_above_unrelated_sentences(engine_url):
    vectors = embed(engine_url, {"input": [s for triple in SIMILAR for s in triple]})
    vectors = vectors["embeddings"]
    for i in range(0, len(vectors), 3):
        anchor, paraphrase, unrelated = vectors[i:i + 3]
        assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.3, SIMILAR[i // 3]
    # and across triples: each anchor's nearest neighbour is its own paraphrase
    for i in range(0, len(vectors), 3):
        scores = [cosine(vectors[i], v) for j, v in enumerate(vectors) if j != i]
        assert max(scores) == cosine(vectors[i], vectors[i + 1])


def test_truncation_follows_the_context_of_512(engine_url):
    long = "word " * 600
    assert embed(engine_url, {"input": long, "truncate": False}, status=400) == \
        {"error": "the input length exceeds the context length"}
    body = embed(engine_url, {"input": [long, "short"]})
    assert body["prompt_eval_count"] == 512 + 3 and len(body["embeddings"][0]) == 384


def test_legacy_embeddings_and_the_ollama_client(engine_url):
    client = ollama.Client(host=engine_url)
    legacy = client.embeddings(model="all-minilm", prompt="hello world").embedding
    batch = client.embed(model="all-minilm", input=["hello world"]).embeddings[0]
    assert len(legacy) == 384 and cosine(legacy, batch) > 0.9999


@pytest.mark.parametrize("path,kind,body", [
    ("/api/chat", "chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/api/chat", "chat", {"messages": []}),  # a load request too, as Ollama
    ("/api/generate", "generate", {"prompt": "hi", "stream": False}),
    ("/api/generate", "generate", {}),
])
def test_chat_and_generate_are_refused_as_ollama_does(engine_url, path, kind, body):
    r = requests.post(engine_url + path, json={"model": "all-minilm", **body}, timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error": f'"all-minilm" does not support {kind}'}


def test_through_chatbot_embed_passes_and_chat_is_refused(stack):
    client = ollama.Client(host=stack.url)
    vectors = client.embed(model="all-minilm", input=["hello world", "goodbye"]).embeddings
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="all-minilm", messages=[{"role": "user", "content": "hi"}],
                    stream=False)
    assert refused.value.status_code == 400
    assert refused.value.error == '"all-minilm" does not support chat'  # not about its window
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="all-minilm", prompt="hi", stream=False)
    assert (refused.value.status_code, refused.value.error) == \
        (400, '"all-minilm" does not support generate')
