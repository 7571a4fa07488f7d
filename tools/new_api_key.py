"""Adds a caller to an ``AUTH_TOKENS_FILE``: makes a fresh API key, stores only its salted hash.

    python -m tools.new_api_key returns-backend --tokens-file secrets/tokens.yaml

prints the key once (hand it to the caller; it cannot be recovered from the file) and writes
the file atomically, so a service reading it never sees half of it. Without ``--tokens-file``
it prints the YAML entry to add by hand (e.g. into a Kubernetes secret).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from svc_common.auth import new_api_key_entry


def add_caller(tokens_file: Path, name: str) -> str:
    data = yaml.safe_load(tokens_file.read_text()) if tokens_file.exists() else None
    data = data or {}
    callers = data.setdefault("callers", {})
    if name in callers:
        raise SystemExit(f"caller {name!r} already has a key in {tokens_file}; remove it first")
    key, entry = new_api_key_entry(name)
    callers.update(entry)
    fd, tmp = tempfile.mkstemp(dir=tokens_file.parent, prefix=f".{tokens_file.name}.")
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, tokens_file)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("name", help="the caller's name, as the policy file and records show it")
    parser.add_argument("--tokens-file", type=Path, help="add the entry to this file in place")
    args = parser.parse_args(argv)
    if args.tokens_file is None:
        key, entry = new_api_key_entry(args.name)
        sys.stdout.write(yaml.safe_dump({"callers": entry}, sort_keys=True))
    else:
        key = add_caller(args.tokens_file, args.name)
    sys.stderr.write(f"API key for {args.name} (shown once): {key}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
