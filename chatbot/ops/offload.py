"""Work that would hold the web's event loop runs in a real OS thread instead.

The web is one gevent loop per process: a view that parses a big body, reads a PDF or writes
thousands of rows without yielding freezes every other client of the process. `run` hands
such work to gevent's thread pool (the calling greenlet waits, the others go on) when the
process runs under gevent, and simply calls it otherwise (threaded servers, the CLI, tests).
Flask's app and request contexts go along. The work must not use sockets opened by the loop
(Redis, the upstream): do the I/O in the view, the CPU and database work here.
"""
import contextvars
import sys


def under_gevent():
    """True in a process whose standard library gevent has patched (gunicorn's gevent
    workers, `chatbot up`)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return monkey.is_module_patched("threading")


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs), off the event loop when there is one; its result or exception."""
    if not under_gevent():
        return fn(*args, **kwargs)
    import gevent

    context = contextvars.copy_context()  # the greenlet's: Flask's contexts, the log fields
    return gevent.get_hub().threadpool.apply(context.run, (fn, *args), kwargs)


READ_PIECE = 256 * 1024  # bytes of a request body read between two yields


def body():
    """The request's body (cached as get_data caches it), read in pieces with a yield between
    them: a big body already in the socket's buffer is read without the loop's waiting, and
    so without yielding, by the server's reader."""
    import time

    from flask import request

    cached = getattr(request, "_cached_data", None)
    if cached is not None or not under_gevent():
        return request.get_data(cache=True)
    pieces = []
    while piece := request.stream.read(READ_PIECE):
        pieces.append(piece)
        time.sleep(0)  # gevent's: the other greenlets run
    request._cached_data = b"".join(pieces)
    return request._cached_data
