"""The running system, as typed records: commands with bounds, RDMA netlink, network
interfaces (`ip -j`, sysfs, ioctl), GID tables, device holders. Imports only core.
"""
