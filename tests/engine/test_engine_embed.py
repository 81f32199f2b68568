"""/api/embed and the legacy /api/embeddings."""
import math

import pytest
import requests

from .conftest import MODEL


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def test_embed_list_gives_normalized_vectors(client, tokenizer):
    texts = ["The cat sat on the mat.", "Quantum chromodynamics"]
    r = client.embed(model=MODEL, input=texts)
    assert len(r.embeddings) == 2 and all(len(v) == 576 for v in r.embeddings)
    assert all(norm(v) == pytest.approx(1.0, abs=1e-4) for v in r.embeddings)
    assert r.embeddings[0] != r.embeddings[1]
    assert r.prompt_eval_count == sum(tokenizer.count(t) for t in texts)
    again = client.embed(model=MODEL, input=texts[0])
    assert again.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-5)


def test_embed_without_input_answers_empty(engine):
    r = requests.post(engine + "/api/embed", json={"model": MODEL})
    assert r.status_code == 200 and r.json()["embeddings"] == []


def test_embed_rejects_other_input_types(engine):
    r = requests.post(engine + "/api/embed", json={"model": MODEL, "input": [1, 2]})
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}


def test_legacy_embeddings_are_unnormalized(client):
    r = client.embeddings(model=MODEL, prompt="The cat sat on the mat.")
    assert len(r.embedding) == 576 and norm(r.embedding) != pytest.approx(1.0, abs=1e-3)
    normalized = client.embed(model=MODEL, input="The cat sat on the mat.").embeddings[0]
    assert [x / norm(r.embedding) for x in r.embedding] == pytest.approx(normalized, abs=1e-4)


def test_embed_truncates_long_input_unless_told_not_to(engine):
    # A small num_ctx keeps this fast; by default the embedding context is 2048 tokens.
    body = {"model": MODEL, "input": "word " * 100, "options": {"num_ctx": 64}}
    r = requests.post(engine + "/api/embed", json=body)
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 64
    r = requests.post(engine + "/api/embed", json={**body, "truncate": False})
    assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context "
                                                          "length"}
