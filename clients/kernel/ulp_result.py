"""What every kernel-client (ULP) scenario reports: one result type for all ULPs. Its
fields mean the same for nvme-rdma and NFS over RDMA; what is a ULP's own (nvme-rdma: the
controller's states and block device; NFS: the transport counters, rdma_cm ids and the
mount) is one typed record in `own` (nvme_scenario.CtrlRecord, nfs_scenario.MountRecord).

    res.ledger.invariant_ok, res.status, res.findings, res.survived, res.to_json()
    res.own.ctrl_states                          # an nvme-rdma result's own record
    UlpResult.from_json(d, CtrlRecord)           # a stored one, read back typed

Its JSON is flat (the own record's fields beside the shared ones, as the results files of
earlier runs have them), the `result` of a kernel client's scenario record
(harness.run.lanes.kernel makes the row of any ULP's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Generic, TypeVar

from harness.workload.block_ledger import LedgerSummary
from harness.workload.coverage import Coverage
from harness.workload.findings import Finding, RowStatus, texts

Own = TypeVar("Own")  # the ULP's own record: a dataclass of JSON values


@dataclass(kw_only=True)
class UlpResult(Generic[Own]):
    scenario: dict[str, Any]  # the ULP's scenario, as given
    options: dict[str, Any]  # its parsed options (NvmeOptions, NfsOptions)
    transition: dict[str, Any]
    ledger: LedgerSummary
    records: list[dict[str, Any]]  # every I/O (harness.workload.block_ledger.IoRecord)
    connections: list[dict[str, Any]]  # its rdma_cm connections, by phase (route_guard)
    off_wire: list[dict[str, Any]]  # those that did not cross the wire
    survived: bool  # the ULP's object (controller, mount) lived through it (see the ULP)
    detect_ms: float | None
    recover_ms: float | None
    kernel: dict[str, Any]  # the kernel log after the scenario's marker (power.kmsg)
    findings: list[str]  # the row's findings (texts; judged as Findings: see judged())
    status: RowStatus
    client_events: list[dict[str, Any]]  # what the client did (clients-first's steps)
    settled: dict[str, Any] = field(default_factory=dict)  # the client after the transition
    hang: dict[str, Any] | None = None  # the kernel client held the device (nvme_hang)
    # what the teardown could not remove (a controller whose delete the kernel held): the
    # kernel is in no state for another scenario of this client
    teardown_left: list[str] = field(default_factory=list)
    # how the I/O met the transition (harness.workload.coverage)
    coverage: Coverage | None = None
    own: Own  # the ULP's own record (its fields are flat in the JSON)

    def judged(self, findings: list[Finding]) -> None:
        """The row's findings and the status they make (RowStatus.of)."""
        self.findings, self.status = texts(findings), RowStatus.of(findings)

    def to_json(self) -> dict[str, Any]:
        own = self.own
        d = asdict(self)
        del d["own"]
        d["ledger"] = self.ledger.to_json()
        d["status"] = self.status.value
        assert is_dataclass(own) and not isinstance(own, type)
        return d | asdict(own)

    @classmethod
    def from_json(cls, d: dict[str, Any], own: type[Own]) -> UlpResult[Own]:
        """A stored result of the ULP whose own record is `own` (keys of others, such as
        the kernel lane's `clients`, are left); a field a record predates takes its
        default. KeyError, TypeError or ValueError on a malformed one."""
        names = {f.name for f in fields(cls)} - {"own"}
        kw = {k: v for k, v in d.items() if k in names}
        kw["ledger"] = LedgerSummary(**{k: v for k, v in d["ledger"].items()
                                        if k != "invariant_ok"})
        kw["status"] = RowStatus(d["status"])
        kw["coverage"] = Coverage.from_json(d["coverage"]) if d.get("coverage") else None
        assert is_dataclass(own)
        mine = {f.name for f in fields(own)}
        return cls(**kw, own=own(**{k: v for k, v in d.items() if k in mine}))
