"""The flow the worker runs for every chat and generate request, streamed or not."""
from pocketflow import Flow

from chatbot.flow.nodes import (Begin, BuildContext, Calibrate, CallChat, CallGenerate, Finish,
                                LoadThread, SizeWindow, StoreReply, StoreRequest, TakePrompt)


def create_chat_flow():
    begin = Begin()
    # chat: the stored thread plus the new messages, fitted into the window.
    load, build, store_chat, finish_chat = LoadThread(), BuildContext(), StoreRequest(), Finish()
    begin - "chat" >> load >> SizeWindow() >> build >> store_chat >> CallChat() >> StoreReply() \
        >> finish_chat >> Calibrate()  # the client hears the end before calibration
    store_chat - "conflict" >> load  # another turn took the thread's next place: start over
    build - "too_long" >> finish_chat  # nothing stored, nothing sent: the client gets a 400
    # generate: single-turn, its own endpoint.
    store_generate = StoreRequest()
    begin - "generate" >> TakePrompt() >> store_generate >> CallGenerate() >> StoreReply() >> Finish()
    store_generate - "conflict" >> store_generate
    return Flow(start=begin)
