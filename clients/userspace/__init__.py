"""Client policies: the same workload through the same I/O path (clients.userspace.core), differing
only in what they do around a power transition. Each runs in its own worker process
(clients.userspace.worker), steered by the controller (harness.run.scenario).

A policy is named by its short name (POLICIES) or, for a policy of your own, as
`package.module:Class` importable in the worker (the tests' leaking client is one).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from clients.userspace.fail_fast import FailFast
from clients.userspace.graceful import Graceful
from clients.userspace.naive import Naive
from clients.userspace.queue_replay import QueueReplay
from harness.core.errors import SettingError

POLICIES = {p.name: p for p in (Naive, FailFast, QueueReplay, Graceful)}


def policy_class(spec: str) -> type:
    """The policy class for a short name or `module:Class`; SettingError names the fix."""
    if spec in POLICIES:
        return POLICIES[spec]
    mod_name, sep, cls_name = spec.partition(":")
    if not sep:
        raise SettingError(f"unknown client policy {spec!r}",
                           f"use one of: {', '.join(POLICIES)}, or module:Class")
    try:
        cls: type = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise SettingError(f"client policy {spec!r} cannot be loaded: {exc}",
                           "give an importable module:Class (is it on PYTHONPATH?)") from None
    for hook in ("on_suspend", "on_resume", "on_error"):
        if not callable(getattr(cls, hook, None)):
            raise SettingError(f"client policy {spec!r} has no {hook}()",
                               "implement the clients.userspace.connection.Policy protocol")
    return cls


def policy_import_roots(specs: list[str]) -> list[str]:
    """For the `module:Class` policies among `specs`: the sys.path entry each module was
    imported from here (policy_class imports it), handed to the worker explicitly
    (clients.userspace.worker --import-root), which starts with -P and so has no working directory
    on its path."""
    roots: list[str] = []
    for spec in specs:
        if spec in POLICIES or ":" not in spec:
            continue
        policy_class(spec)
        mod_name = spec.partition(":")[0]
        origin = getattr(sys.modules[mod_name], "__file__", None)
        if origin is None:
            continue
        root = Path(origin).resolve().parent
        for _ in range(mod_name.count(".") + (Path(origin).name == "__init__.py")):
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots
