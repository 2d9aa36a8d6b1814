"""A test client process that holds the local HCA open, with a chosen power policy.

    python tests/helpers/device_client.py --device rxe0 --policy ignore|cooperative|veto|none
        [--clients-dir DIR]

It opens the device (Context + PD), registers for power notifications (unless
--policy none) and prints one JSON line per thing that happens ("ready",
"suspend", "released", "resume", "reopened"), so a test can follow it. It runs
until stdin closes or it is terminated.
- ignore: takes no notice (never answers) and keeps the device open;
- cooperative: on suspend_prepare closes the device and answers released; on
  resume_complete reopens the device it is told about;
- veto: answers veto with a reason and keeps the device open.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from pathlib import Path

from harness.core.device import DeviceInfo
from harness.rdma.verbs import Device
from power.notify import CLIENTS_DIR, ClientEndpoint, SuspendReply


def say(event: str, **detail: object) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **detail}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--policy", choices=["ignore", "cooperative", "veto", "none"],
                    required=True)
    ap.add_argument("--clients-dir", type=Path, default=CLIENTS_DIR)
    args = ap.parse_args()
    dev: Device | None = Device(args.device)

    def on_suspend(transition: str, deadline_s: float) -> SuspendReply | None:
        nonlocal dev
        say("suspend", transition=transition, deadline_s=deadline_s)
        if args.policy == "ignore":
            return None
        if args.policy == "veto":
            return SuspendReply.veto("test client is busy and refuses to sleep")
        if dev is not None:
            dev.close()
            dev = None
        say("released")
        return SuspendReply.release()

    def on_resume(transition: str, info: DeviceInfo) -> None:
        nonlocal dev
        say("resume", transition=transition, device=info.to_json())
        if dev is None:
            dev = Device(info.dev, info.port, info.gid_index)
            say("reopened", gid=dev.gid)

    endpoint = None
    if args.policy != "none":
        endpoint = ClientEndpoint(f"test-{args.policy}", on_suspend, on_resume,
                                  clients_dir=args.clients_dir)
    say("ready")
    stdin = sys.stdin.fileno()
    try:
        while True:
            fds = [stdin] + ([endpoint.fileno()] if endpoint else [])
            readable, _, _ = select.select(fds, [], [])
            if stdin in readable and not os.read(stdin, 4096):
                return 0
            if endpoint and endpoint.fileno() in readable:
                endpoint.handle_ready()
    finally:
        if endpoint:
            endpoint.close()
        if dev is not None:
            dev.close()


if __name__ == "__main__":
    raise SystemExit(main())
