"""Noticing a gone client (chatbot.api.disconnect) on descriptors past select()'s 1023, which a
web process holding thousands of waiting clients reaches."""
import socket

from chatbot.api.disconnect import client_gone


def test_a_client_past_descriptor_1023_is_seen_open_then_gone():
    filler = [socket.socket() for _ in range(1100)]  # push the pair's descriptors past 1023
    try:
        ours, theirs = socket.socketpair()
        assert ours.fileno() > 1023
        assert not client_gone(ours)  # open, nothing sent: still there
        theirs.sendall(b"x")
        assert not client_gone(ours)  # open, with a byte unread: still there
        ours.recv(1)
        theirs.close()
        assert client_gone(ours)  # closed by the other side
        ours.close()
    finally:
        for sock in filler:
            sock.close()
