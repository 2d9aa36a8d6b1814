"""Kernel RDMA clients (ULPs) under the power shim: an nvmet-rdma target on the peer side,
an nvme-rdma host controller on the local side, the routing guard that keeps their
connections on the wire, and the scenario that runs them through a transition."""
