"""Token counting, what of a request is new to the session, and fitting a conversation into
the model's context window. Pure functions: the nodes bring the data."""
from chatbot.store.sessions import chain
from chatbot.tokens import count_tokens, encoding

# Chat templates wrap every message in a few tokens of their own (role markers, separators).
PER_MESSAGE = 4
NOTE = ("Note: this conversation was truncated to fit the context window; {dropped} earlier "
        "message{s} are not shown.")
SUMMARY = "Summary of the earlier conversation, whose messages are not shown: "
# A new summary also covers enough of the oldest kept messages to free this share of the
# history's room, so that the next turns reuse it instead of summarizing again.
FREE_AFTER_SUMMARY = 0.25


# Ollama's answer to a prompt that does not fit (llm/llama_server.go), given also when a
# client's `truncate: false` forbids leaving history out.
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the "
                   "model; shorten the prompt, adjust the context length in settings, or use a "
                   "model with a longer context length")
# How Ollama (and the llama-server behind it) word that refusal.
TOO_LONG_SIGNS = ("longer than the context length", "exceeds the available context",
                  "exceeds maximum context length")
# A context the upstream refused as too long is sent again at this share of its size.
SHRINK = 0.75


def refused_as_too_long(error):
    """Whether an upstream error (status, text) says the prompt did not fit its window."""
    return bool(error) and error.get("status") == 400 and any(
        sign in str(error.get("error", "")).lower() for sign in TOO_LONG_SIGNS)


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
    skip = {m["seq"] for m in system}
    kept = newest_within((m for m in newest_first if m["seq"] not in skip), budget - used)
    used += sum(cost(m) for m in kept)
    dropped = stored - len(system) - len(kept)
    context = list(system)
    if dropped > 0:  # make room for the note, dropping more of the oldest if need be
        while True:
            note = note_message(dropped)
            if used + cost(note) <= budget or not kept:
                break
            used -= cost(kept.pop())
            dropped += 1
        used += cost(note)
        context.append(note)
    return context + kept[::-1] + list(new), used, max(dropped, 0)


def shrink(context, system, dropped, target):
    """The context with its oldest history left out until it costs at most `target` (our
    tokens): the upstream counted more than we reckoned and refused it. The leading system
    messages, a summary or the note (updated), the sources and the request's new messages
    stay. Returns (context, tokens, dropped), or None when no history is left to leave out."""
    skip = {m["seq"] for m in system}
    history = [i for i, m in enumerate(context) if m.get("seq") is not None and m["seq"] not in skip]
    if not history:
        return None
    used, gone = sum(cost(m) for m in context), set()
    for i in history:
        if used <= target and gone:
            break
        used -= cost(context[i])
        gone.add(i)
    dropped += len(gone)
    kept = [m for i, m in enumerate(context) if i not in gone]
    notes = [i for i, m in enumerate(kept) if m.get("seq") is None
             and m["role"] == "system" and m["content"].startswith(NOTE[:40])]
    if notes:
        kept[notes[0]] = note_message(dropped)
    elif not any(m["role"] == "system" and m["content"].startswith(SUMMARY) for m in kept):
        kept.insert(len(system), note_message(dropped))
    return kept, sum(cost(m) for m in kept), dropped


def note_message(dropped):
    note = {"role": "system", "content": NOTE.format(dropped=dropped, s="" if dropped == 1 else "s")}
    return {**note, "tokens": count_tokens(note)}


def summary_room(max_tokens):
    """What a summary of at most `max_tokens` costs in the window (never less than the note)."""
    return max(max_tokens + count_tokens({"content": SUMMARY}), note_message(10 ** 6)["tokens"]) \
        + PER_MESSAGE


def summary_message(text, max_tokens):
    """The system message a summary is sent as, cut to fit its room if the model ran over."""
    ids = encoding().encode(SUMMARY + text, disallowed_special=())
    message = {"role": "system",
               "content": encoding().decode(ids[:summary_room(max_tokens) - PER_MESSAGE])}
    return {**message, "tokens": count_tokens(message)}


def fit_summarized(system, newest_first, new, budget, stored, summary, room):
    """CONTEXT_STRATEGY=summarize: like fit, but the messages up to `summary`'s last_seq are
    sent as that summary (one system message) and never again one by one. When more must be
    left out, `room` tokens are kept for a new summary (the plain note holds its place until
    it is made) and FREE_AFTER_SUMMARY of the history's room is freed too.

    Returns (context, tokens, dropped, span): span is the (first, last) seq of the messages a
    new summary must cover, None when the context is complete as it is."""
    newest_first = list(newest_first)
    fixed = sum(cost(m) for m in system) + sum(cost(m) for m in new)
    if fixed > budget:
        raise TooLong(fixed, budget)
    covered, skip = (summary["last_seq"] if summary else 0), {m["seq"] for m in system}
    history = [m for m in newest_first if m["seq"] not in skip and m["seq"] > covered]
    after_summary = stored - covered - sum(1 for seq in skip if seq > covered)
    head = [{"role": "system", "content": summary["content"], "tokens": summary["tokens"]}] \
        if summary else []
    kept = newest_within(history, budget - fixed - sum(cost(m) for m in head))
    if len(kept) == after_summary:  # nothing beyond what the summary covers is left out
        used = fixed + sum(cost(m) for m in head + kept)
        return system + head + kept[::-1] + list(new), used, stored - len(system) - len(kept), None
    if fixed + room > budget:  # no room for a summary in this window: plain truncation
        return (*fit(system, newest_first, new, budget, stored), None)
    kept = newest_within(history, (budget - fixed - room) * (1 - FREE_AFTER_SUMMARY))
    dropped = stored - len(system) - len(kept)
    note = note_message(dropped)
    used = fixed + cost(note) + sum(cost(m) for m in kept)
    first = covered + 1
    while first in skip:  # a leading system message is sent anyway, not summarized
        first += 1
    span = (first, kept[-1]["seq"] - 1 if kept else stored)
    return system + [note] + kept[::-1] + list(new), used, dropped, span


def newest_within(newest_first, room):
    """The newest messages that fit in `room`, newest first."""
    kept, used = [], 0
    for message in newest_first:
        if used + cost(message) > room:
            break
        used += cost(message)
        kept.append(message)
    return kept


def summary_request(model, previous, messages, max_tokens, options, budget):
    """The /api/chat body (streamed, so that it can stop at any token) asking for a summary
    of `messages` (oldest first), extending `previous` (a summary's content, or None), and how many
    of the messages it shows: the newest that fit `budget` (our tokens, the chat's) less the
    reply and the rest of the prompt. It keeps the chat's num_ctx, so the upstream need not
    reload the model."""
    head = f"Summary so far: {previous.removeprefix(SUMMARY)}\n\n" if previous else ""
    room = budget - max_tokens - count_tokens({"content": SUMMARIZE + head}) - 3 * PER_MESSAGE
    shown = newest_within(messages[::-1], room)[::-1]
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in shown)
    kept = {k: options[k] for k in ("num_ctx", "seed") if k in options}
    return {"model": model, "stream": True,
            "messages": [{"role": "system", "content": SUMMARIZE},
                         {"role": "user", "content": f"{head}Conversation:\n{transcript}"}],
            "options": {**kept, "temperature": 0, "num_predict": max_tokens}}, len(shown)


SUMMARIZE = ("Summarize the conversation below in a few short sentences for whoever continues "
             "it: names, facts and preferences the user gave, what was decided or asked. Start "
             "from the summary so far, if any. Write only the summary.")


SOURCES = ("Excerpts from documents the user added to this conversation. Use them when they "
           "help answer, and name the source in brackets when you do.")


def sources_message(retrieved, room):
    """A system message quoting the retrieved chunks, best first, as many as fit in `room`
    (our tokens); (None, []) when none does."""
    text, used = SOURCES, []
    for hit in retrieved:
        longer = f"{text}\n\n[{hit['document']} #{hit['chunk']}]\n{hit['content']}"
        message = {"role": "system", "content": longer}
        if cost({**message, "tokens": count_tokens(message)}) > room:
            break
        text = longer
        used.append(hit)
    if not used:
        return None, []
    message = {"role": "system", "content": text}
    return {**message, "tokens": count_tokens(message)}, used


def reserve_sources(system, new, budget, retrieved):
    """Room for the retrieved chunks before any older history: (their system message, or None
    when none fits beside the system and new messages; the chunks it quotes; the budget left
    for the rest of the context)."""
    room = budget - sum(cost(m) for m in system) - sum(cost(m) for m in new)
    message, used = sources_message(retrieved, room) if retrieved else (None, [])
    return message, used, budget - (cost(message) if message else 0)


def with_sources(context, message, new):
    """The context with the sources message just before the request's new messages."""
    if message is None:
        return context
    at = len(context) - len(new)
    return context[:at] + [message] + context[at:]
