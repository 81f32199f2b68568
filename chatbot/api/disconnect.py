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
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
