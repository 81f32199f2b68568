"""The chat flow the worker runs for every chat and generate request, streamed or not."""
from pocketflow import Flow

from chatbot.flow.nodes import BuildContext, CallUpstream, Finish, LoadSession, StoreReply, StoreRequest


def create_chat_flow():
    load = LoadSession()
    load >> BuildContext() >> StoreRequest() >> CallUpstream() >> StoreReply() >> Finish()
    return Flow(start=load)
