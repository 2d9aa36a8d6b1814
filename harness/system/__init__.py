"""The running system, as typed records: commands with bounds, RDMA netlink, network
interfaces (`ip -j`, sysfs, ioctl), GID tables, device holders, the rxe kernel module.
Imports only core.
"""
