"""The running system, as typed records: commands with bounds (command), RDMA netlink
(rdma_netlink), network interfaces (`ip -j`, sysfs, ioctl: network), what exists now
(inventory: rdma links, ip links, addresses, rules, routes), GID tables (gid_table),
device holders (holders), the rdma_rxe module, stock or ours with disassociate, and the
removal mode (rxe_module), local TCP ports (tcp_ports), rdma_cm ids (`rdma -j res show
cm_id`: rdma_cm_ids), the write to /dev/nvme-fabrics (nvme_fabrics, run as a child).
Standard library only (ci/rxe-setup.sh runs the topology with the system python3).
Imports only core.
"""
