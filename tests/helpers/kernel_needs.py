"""What the kernel-client tests need of the kernel, as data (tests/rxe/conftest.py checks a
test's `kernel_modules` marker with modinfo before it starts)."""

NVME_RDMA_MODULES = ("nvmet", "nvmet-rdma", "nvme-rdma", "null_blk")  # target, host, disk
NFS_RDMA_MODULES = ("nfsd", "rpcrdma")  # the server; rpcrdma holds xprtrdma and svcrdma
