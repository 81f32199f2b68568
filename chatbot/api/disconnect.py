"""Noticing a client that went away while its request waits.

A WSGI app only learns of a disconnect when it writes, and a queued or non-streamed request
writes nothing for a long time; official clients parse every NDJSON line, so no keep-alive
lines either. Instead we peek at the client's socket: readable with nothing to read = closed.
"""
import socket


def client_socket(environ):
    return environ.get("werkzeug.socket") or environ.get("gunicorn.socket")


def client_gone(sock):
    if sock is None:
        return False
    # A peek that never waits, on the OS socket itself: gevent's wrapper (`_sock` inside) would
    # wait for data, and select() refuses descriptors past 1023, which thousands of waiting
    # clients reach. Data or nothing to read: still there; end of file: gone.
    raw = getattr(sock, "_sock", sock)
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
