"""`import pyverbs` in a child of doctor (`python_child("harness.cli.pyverbs_probe")`),
bounded by the parent: a broken install must not hang doctor. Prints one JSON line,
{"version": ..., "file": ...}."""

from __future__ import annotations

import json

import pyverbs

if __name__ == "__main__":
    print(json.dumps({"version": getattr(pyverbs, "__version__", None),
                      "file": getattr(pyverbs, "__file__", None)}))
