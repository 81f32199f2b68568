"""The chat flow the worker runs for every chat and generate request, streamed or not."""
from pocketflow import Flow

from chatbot.flow.nodes import (BuildContext, Calibrate, CallUpstream, Finish, LoadSession,
                                SizeWindow, StoreReply, StoreRequest)


def create_chat_flow():
    load, build, finish = LoadSession(), BuildContext(), Finish()
    # Finish before Calibrate: the client hears the end as soon as the reply is stored.
    load >> SizeWindow() >> build >> StoreRequest() >> CallUpstream() >> StoreReply() >> finish >> Calibrate()
    build - "too_long" >> finish  # nothing stored, nothing sent: the client gets a 400
    return Flow(start=load)
