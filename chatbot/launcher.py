"""The `chatbot` console script: `chatbot up` (everything, one command) and `chatbot engine`."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="chatbot")
    sub = parser.add_subparsers(dest="command", required=True)
    engine = sub.add_parser("engine", help="run the bundled Ollama-compatible engine")
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=11435)
    args = parser.parse_args(argv)
    if args.command == "engine":
        from chatbot.engine.server import serve

        return serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
