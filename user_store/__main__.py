"""`python -m user_store --db PATH COMMAND ...`: script the personal history store."""
from __future__ import annotations

import argparse
import json
import sys

from . import KINDS, StoreError, UserStore, default_db_path, read_import


def build_parser():
    p = argparse.ArgumentParser(prog="python -m user_store", description="CoSteer Studio's local personal history store")
    p.add_argument("--db", default=None, help=f"SQLite file (env COSTEER_DB; default {default_db_path()})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("users", help="list users")
    c = sub.add_parser("add-user", help="create a user")
    c.add_argument("name")
    c = sub.add_parser("add", help="add a history entry")
    c.add_argument("name")
    c.add_argument("text")
    c.add_argument("--kind", default="note", choices=KINDS)
    c.add_argument("--title")
    c.add_argument("--pinned", action="store_true")
    c.add_argument("--sensitive", action="store_true", help="put the entry's rare words on the steering deny-list")
    c = sub.add_parser("entries", help="list a user's entries as JSON lines")
    c.add_argument("name")
    c = sub.add_parser("search", help="BM25 search of one user's entries")
    c.add_argument("name")
    c.add_argument("query")
    c.add_argument("-k", type=int, default=5)
    c = sub.add_parser("context", help="print the personal context a message would produce")
    c.add_argument("name")
    c.add_argument("query")
    c.add_argument("--max-tokens", type=int, default=512)
    c = sub.add_parser("import", help="import a .json or .jsonl file")
    c.add_argument("file")
    c.add_argument("--user", help="target user (needed when the file names none)")
    c.add_argument("--mode", choices=("merge", "replace"), default="merge")
    c.add_argument("--yes", action="store_true", help="with --mode replace: delete the named user's entries without asking")
    c = sub.add_parser("export", help="print a user's history as JSON")
    c.add_argument("name")
    return p


def _text_args(parser, args):
    """Arguments the shell could not decode arrive with lone surrogates: refuse them in words."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                parser.error(f"{name.replace('_', '-')}: not valid UTF-8 text")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _text_args(parser, args)
    try:
        store = UserStore(args.db)
        cmd = args.command
        if cmd == "users":
            print("\n".join(store.users()))
        elif cmd == "add-user":
            print(store.add_user(args.name))
        elif cmd == "add":
            print(store.add_entry(args.name, args.text, kind=args.kind, title=args.title, pinned=args.pinned,
                                  sensitive=args.sensitive))
        elif cmd == "entries":
            for e in store.entries(args.name):
                print(json.dumps(e, ensure_ascii=False))
        elif cmd == "search":
            for e in store.search(args.name, args.query, k=args.k):
                print(json.dumps(e, ensure_ascii=False))
        elif cmd == "context":
            print(store.build_context(args.name, args.query, max_tokens=args.max_tokens))
        elif cmd == "import":
            data = read_import(args.file)
            victim = store.replace_victim(data, args.user) if args.mode == "replace" else None
            if victim and not args.yes:
                parser.error(f"--mode replace would delete the {victim[1]} entries of {victim[0]!r}; "
                             "add --yes to do it")
            print(json.dumps(store.import_user(data, mode=args.mode, user=args.user)))
        elif cmd == "export":
            print(json.dumps(store.export_user(args.name), ensure_ascii=False, indent=1))
    except StoreError as exc:
        print(f"user_store: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
