"""Timestamps along a request's path (web, broker, worker, relay back) and the Server-Timing
header they make, so that what each layer costs is measured, not guessed.

The web marks `received`, `admitted` (its task pushed with it), `relayed` (the final event
reached it) and `responded`; the worker marks `task` (the task began or, for a worker waiting
on the task list, the message came with its claim), `begun` (claimed, heartbeat and thread
lock in hand), the end of each flow node by its name, and `ending` (just before the line ends
the request); its marks travel back in the final event. Clocks are the machine's own
(time.time()), which web and worker share when they share a machine.
"""
import time

# (layer, from mark, to mark); a "|" names alternatives (chat's node or generate's).
LAYERS = (
    ("admit", "received", "admitted"),
    ("hop", "admitted", "task"),
    ("start", "task", "begun"),
    ("context", "begun", "BuildContext|TakePrompt"),
    ("summarize", "BuildContext", "SummarizeDropped"),  # only on a turn that summarized
    ("store_request", "SummarizeDropped|BuildContext|TakePrompt", "StoreRequest"),
    ("upstream", "StoreRequest", "CallChat|CallGenerate"),
    ("store_reply", "CallChat|CallGenerate", "StoreReply"),
    ("finish", "StoreReply", "ending"),
    ("relay", "ending", "relayed"),
    ("respond", "relayed", "responded"),
    ("total", "received", "responded"),
)


def now():
    return time.time()


def _at(marks, names):
    return next((marks[n] for n in names.split("|") if n in marks), None)


def layers(marks):
    """{layer: seconds} for every layer whose two marks are known. A layer starts no earlier
    than the one before it ended: the worker may start before the web has heard that the
    request is admitted, and such an overlap counts once, in the earlier layer."""
    out, ended = {}, float("-inf")
    for name, start, end in LAYERS:
        a, b = _at(marks, start), _at(marks, end)
        if a is not None and b is not None:
            if name != "total":
                a, ended = max(a, ended), max(b, ended)
            out[name] = max(0.0, b - a)
    return out


def header(marks):
    """A Server-Timing header value (durations in milliseconds)."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in layers(marks).items())
