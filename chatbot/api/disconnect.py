"""Noticing a client that went away while its request waits.

A WSGI app only learns of a disconnect when it writes, and a queued or non-streamed request
writes nothing for a long time; official clients parse every NDJSON line, so no keep-alive
lines either. Instead we peek at the client's socket: readable with nothing to read = closed.
"""
import select
import socket


def client_socket(environ):
    return environ.get("werkzeug.socket") or environ.get("gunicorn.socket")


def client_gone(sock):
    if sock is None:
        return False
    try:
        # poll, not select: select refuses descriptors past 1023, which thousands of waiting
        # clients reach (and gevent's poll, like the real one, answers at once with 0).
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
