"""Token counting, what of a request is new to the session, and fitting a conversation into
the model's context window. Pure functions: the nodes bring the data."""
from chatbot.store.sessions import chain
from chatbot.tokens import count_tokens

# Chat templates wrap every message in a few tokens of their own (role markers, separators).
PER_MESSAGE = 4
NOTE = ("Note: this conversation was truncated to fit the context window; {dropped} earlier "
        "message{s} are not shown.")


class TooLong(Exception):
    """The request's own messages do not fit the window: nothing may be dropped from them."""


def cost(message):
    return message["tokens"] + PER_MESSAGE


def new_messages(tail, messages):
    """The request's messages the session does not hold yet.

    Stateless clients resend the whole conversation: when the request starts with the stored
    thread (same chained hash at the thread's length), only its tail is new.
    """
    length, stored_chain = tail
    if not length or len(messages) < length:
        return messages
    running = ""
    for message in messages[:length]:
        running = chain(running, message.get("role"), message.get("content"))
    return messages[length:] if running == stored_chain else messages


def fit(system, newest_first, new, budget, stored):
    """The messages to send: the thread's leading system messages, the newest stored messages
    that fit in `budget` (our tokens), the request's new messages; a note if some were left
    out. Returns (context, tokens, dropped). Raises TooLong if `new` alone does not fit."""
    used = sum(cost(m) for m in system) + sum(cost(m) for m in new)
    if used > budget:
        raise TooLong(used, budget)
    kept_seqs = {m["seq"] for m in system}
    kept = []
    for message in newest_first:
        if message["seq"] in kept_seqs:
            continue
        if used + cost(message) > budget:
            break
        used += cost(message)
        kept.append(message)
    dropped = stored - len(system) - len(kept)
    context = list(system)
    if dropped > 0:  # make room for the note, dropping more of the oldest if need be
        note = {"role": "system", "content": ""}
        while True:
            note["content"] = NOTE.format(dropped=dropped, s="" if dropped == 1 else "s")
            note["tokens"] = count_tokens(note)
            if used + cost(note) <= budget or not kept:
                break
            used -= cost(kept.pop())
            dropped += 1
        used += cost(note)
        context.append(note)
    return context + kept[::-1] + list(new), used, max(dropped, 0)
