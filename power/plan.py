"""Transitions as data: each an ordered list of steps on the local HCA and its netdev.

A step says which kernel operations it performs and how that differs from a real
HCA going through an OS sleep. rxe has no power-management callbacks: a real
suspend reaches it only through its netdev's carrier, so every transition here is
built from what the kernel can do to an rxe device (carrier, delete, re-create)
and from what an OS tells its clients (suspend_prepare, resume_complete).

Orderings:
- clients-first: clients are told and get a deadline to quiesce and release the
  device before anything happens to it (as a PnP child of the HCA would be);
- hca-first: the device goes first; clients hear of the sleep only afterwards
  (as with no power relationship between the HCA and its clients).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from harness.core.errors import SettingError
from harness.system.provenance import FaultModel


class Ordering(StrEnum):
    CLIENTS_FIRST = "clients-first"
    HCA_FIRST = "hca-first"


class OnVeto(StrEnum):
    WAIT = "wait"  # wait up to a bound for the holders, then report the sleep as vetoed
    FORCE = "force"  # terminate the holders, as an OS that cannot wait would


class StepKind(StrEnum):
    NOTIFY_SUSPEND = "notify-suspend"
    PORT_DOWN = "port-down"
    DELETE_DEVICE = "delete-device"
    DESTROY_NETDEV = "destroy-netdev"
    HOLD = "hold"
    CREATE_NETDEV = "create-netdev"
    CREATE_DEVICE = "create-device"
    PORT_UP = "port-up"
    NOTIFY_RESUME = "notify-resume"
    PM_SUSPEND = "pm-suspend"
    KERNEL_SUSPEND = "kernel-suspend"
    DEVICE_BACK = "device-back"


# The steps that take the device away from its clients, and those that give it back: the
# device is away from the first one's begin to the last one's end (a pm-suspend step is
# both: the system sleeps and resumes inside it)
DEVICE_AWAY_STEPS = frozenset({StepKind.PORT_DOWN, StepKind.DELETE_DEVICE,
                               StepKind.DESTROY_NETDEV, StepKind.PM_SUSPEND,
                               StepKind.KERNEL_SUSPEND})
DEVICE_BACK_STEPS = frozenset({StepKind.PORT_UP, StepKind.CREATE_DEVICE,
                               StepKind.CREATE_NETDEV, StepKind.PM_SUSPEND,
                               StepKind.DEVICE_BACK})
# The pm_test level of the kernel-suspend step: the kernel's suspend and resume of every
# device, no firmware (the mlx5 order happens in that phase)
KERNEL_SUSPEND_LEVEL = "devices"


@dataclass(frozen=True)
class StepDoc:
    kernel_ops: str  # what the shim makes the kernel do
    versus_real: str  # how that differs from a real HCA in an OS sleep


STEP_DOCS: dict[StepKind, StepDoc] = {
    StepKind.NOTIFY_SUSPEND: StepDoc(
        "none: suspend_prepare(deadline) to every registered client (in-process callbacks and "
        "sockets in the clients directory); answers are released, veto or none by the deadline",
        "an OS sends PM notifications (PBT_APMSUSPEND, systemd PrepareForSleep) the same way; "
        "a PnP child of the HCA would get them from the driver stack instead",
    ),
    StepKind.PORT_DOWN: StepDoc(
        "ip link set NETDEV down: rxe sees the carrier drop, the port goes DOWN, PORT_ERR is "
        "delivered; QPs that send move to ERR",
        "a real HCA losing link behaves alike; on a real sleep the HCA would also save state "
        "and power off, which rxe cannot",
    ),
    StepKind.DELETE_DEVICE: StepDoc(
        "rdma link delete DEV from a child process, bounded: ib_unregister_device runs every "
        "ib_client's remove(); with --removal block (stock rdma_rxe) ib_uverbs_remove_one "
        "waits until every uverbs file of the device is closed; with --removal disassociate "
        "(our rdma_rxe build) it takes each holder's context away (IBV_EVENT_DEVICE_FATAL, "
        "EIO) and completes",
        "a real HCA driver (mlx5, mlx4, irdma, hns) disassociates as --removal disassociate "
        "does; stock rxe cannot, so under --removal block the delete blocks on a holder (a "
        "veto by holding) until the holder closes or is ended; kernel ULPs hold it in both "
        "modes until their remove() returns",
    ),
    StepKind.DESTROY_NETDEV: StepDoc(
        "ip link del NETDEV (its veth pair): the address, GIDs and routes go with it",
        "hibernate powers the NIC off entirely; after resume it re-probes with new state",
    ),
    StepKind.HOLD: StepDoc(
        "none: the shim stays asleep for the hold time",
        "a real sleep lasts until a wake event; the hold stands in for that duration",
    ),
    StepKind.CREATE_NETDEV: StepDoc(
        "a new veth pair plugged into the switch with the same name and address (new ifindex), "
        "left down",
        "a NIC re-probed after hibernate gets a fresh netdev",
    ),
    StepKind.CREATE_DEVICE: StepDoc(
        "rdma link add DEV type rxe netdev NETDEV: a fresh device, no QP survives",
        "a real HCA resumes its device (or re-probes it); user contexts from before are dead "
        "either way",
    ),
    StepKind.PORT_UP: StepDoc(
        "ip link set NETDEV up, routes re-added; wait until the port is ACTIVE with its RoCEv2 "
        "GID (PORT_ACTIVE and GID_CHANGE events)",
        "a real port comes up after link training; here it is immediate",
    ),
    StepKind.NOTIFY_RESUME: StepDoc(
        "none: resume_complete(device info) to every client: device name, port, netdev, "
        "ifindex, address, GID and its index",
        "an OS sends resume notifications alike; the device info tells clients what to reopen",
    ),
    StepKind.PM_SUSPEND: StepDoc(
        "echo LEVEL > /sys/power/pm_test; echo freeze > /sys/power/state: a real suspend "
        "sequence (freeze tasks, suspend devices...) up to LEVEL, held pm_test_delay seconds",
        "this is the kernel's own suspend path; rxe has no PM callbacks, so the HCA is only "
        "touched if its netdev's carrier changes",
    ),
    StepKind.KERNEL_SUSPEND: StepDoc(
        "our rdma_rxe armed for the local device (its pm_unregister parameter), then echo "
        "devices > /sys/power/pm_test; echo freeze > /sys/power/state: user space and "
        "freezable kernel threads are frozen, then the device-suspend phase unregisters the "
        "device as `rdma link delete` does (every ib_client's remove() runs there, holders "
        "are disassociated), the kernel waits pm_test_delay s, and the resume phase adds it "
        "again as `rdma link add` does; the kernel log's PM lines time each phase",
        "the order of mlx5_suspend -> mlx5_unload_one and mlx5_resume -> mlx5_load_one; the "
        "system does not power off (pm_test stops before the platform), and the peer HCA, "
        "in the same kernel, is frozen with everything else",
    ),
    StepKind.DEVICE_BACK: StepDoc(
        "none: wait until the device registered at resume is ACTIVE with its uverbs node, "
        "and the shim's own holder saw DEVICE_FATAL on the old one",
        "a real HCA's resume registers a new ib_device alike; its port trains first",
    ),
}


@dataclass(frozen=True)
class Transition:
    name: str
    summary: str
    default_hold_ms: int
    steps: dict[Ordering, tuple[StepKind, ...]]
    fidelity: str  # one line for the README table: how close to a real sleep this is
    fault_model: FaultModel = FaultModel.USERSPACE_REMOVAL

    def plan(self, ordering: Ordering) -> tuple[StepKind, ...]:
        if ordering not in self.steps:
            have = ", ".join(o.value for o in self.steps)
            raise SettingError(
                f"transition {self.name!r} has no {ordering.value} ordering",
                f"use --ordering {have}" + (
                    " (a surprise removal gives no notice)" if self.name == "surprise-removal"
                    else ""),
            )
        return self.steps[ordering]


S = StepKind
CF, HF = Ordering.CLIENTS_FIRST, Ordering.HCA_FIRST

TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    Transition(
        "link-flap", "carrier down, hold, carrier up (port error / port active)", 500,
        {CF: (S.NOTIFY_SUSPEND, S.PORT_DOWN, S.HOLD, S.PORT_UP, S.NOTIFY_RESUME),
         HF: (S.PORT_DOWN, S.NOTIFY_SUSPEND, S.HOLD, S.PORT_UP, S.NOTIFY_RESUME)},
        "faithful to a link loss; the device and its contexts stay",
    ),
    Transition(
        "standby", "port down, device deleted, hold, device re-created on the same netdev", 500,
        {CF: (S.NOTIFY_SUSPEND, S.PORT_DOWN, S.DELETE_DEVICE, S.HOLD, S.CREATE_DEVICE,
              S.PORT_UP, S.NOTIFY_RESUME),
         HF: (S.PORT_DOWN, S.DELETE_DEVICE, S.NOTIFY_SUSPEND, S.HOLD, S.CREATE_DEVICE,
              S.PORT_UP, S.NOTIFY_RESUME)},
        "the device really goes and comes back; no device state is saved (as for an HCA "
        "without PM support); holders block the delete instead of getting DEVICE_FATAL",
    ),
    Transition(
        "hibernate", "as standby, longer hold, and the netdev destroyed and re-created", 2000,
        {CF: (S.NOTIFY_SUSPEND, S.PORT_DOWN, S.DELETE_DEVICE, S.DESTROY_NETDEV, S.HOLD,
              S.CREATE_NETDEV, S.CREATE_DEVICE, S.PORT_UP, S.NOTIFY_RESUME),
         HF: (S.PORT_DOWN, S.DELETE_DEVICE, S.DESTROY_NETDEV, S.NOTIFY_SUSPEND, S.HOLD,
              S.CREATE_NETDEV, S.CREATE_DEVICE, S.PORT_UP, S.NOTIFY_RESUME)},
        "as standby, plus a new netdev (new ifindex, addresses and GIDs set up afresh)",
    ),
    Transition(
        "surprise-removal", "no notice: the device is deleted under its clients, then re-plugged",
        500,
        {HF: (S.DELETE_DEVICE, S.HOLD, S.CREATE_DEVICE, S.PORT_UP, S.NOTIFY_RESUME)},
        "no DEVICE_FATAL on rxe: the removal waits for the holders (or forces them out)",
    ),
    Transition(
        "pm-test", "a real kernel suspend sequence to a pm_test level (freeze, no power-off)",
        1000,
        {CF: (S.NOTIFY_SUSPEND, S.PM_SUSPEND, S.NOTIFY_RESUME),
         HF: (S.PM_SUSPEND, S.NOTIFY_SUSPEND, S.NOTIFY_RESUME)},
        "the kernel's real suspend path; rxe has no PM callbacks so the HCA itself is untouched",
        FaultModel.KERNEL_SUSPEND,
    ),
    Transition(
        "standby-devices", "a real kernel suspend (pm_test devices) in which the device is "
        "unregistered in the device-suspend phase and registered again at resume", 1000,
        {CF: (S.NOTIFY_SUSPEND, S.KERNEL_SUSPEND, S.DEVICE_BACK, S.NOTIFY_RESUME),
         HF: (S.KERNEL_SUSPEND, S.NOTIFY_SUSPEND, S.DEVICE_BACK, S.NOTIFY_RESUME)},
        "the mlx5 order: user space frozen first, the device gone inside the device-suspend "
        "phase (kernel ULPs' remove() there), a new device at resume, holders wake to "
        "DEVICE_FATAL",
        FaultModel.MLX5_ORDER,
    ),
)}


def get_transition(name: str) -> Transition:
    try:
        return TRANSITIONS[name]
    except KeyError:
        raise SettingError(f"unknown transition {name!r}",
                           f"use one of: {', '.join(TRANSITIONS)}") from None


def parse_choice(enum_cls: type[StrEnum], raw: str, what: str) -> StrEnum:
    """A value of one of our string enums, or an error listing the valid ones."""
    try:
        return enum_cls(raw)
    except ValueError:
        raise SettingError(f"unknown {what} {raw!r}",
                           f"use one of: {', '.join(m.value for m in enum_cls)}") from None


def parse_ordering(raw: str) -> Ordering:
    return Ordering(parse_choice(Ordering, raw, "ordering"))


def parse_on_veto(raw: str) -> OnVeto:
    return OnVeto(parse_choice(OnVeto, raw, "veto policy"))
