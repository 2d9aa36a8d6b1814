"""Run a command inside a distribution kernel that has rdma_rxe, booted in QEMU by virtme-ng.

The host kernel may have no RDMA at all. Then the harness boots the newest installed
distribution kernel that ships ``rdma_rxe.ko`` (Debian: linux-image-amd64) with
virtme-ng (``vng``), which shares the host root file system read-only with the guest,
and runs one shell command in it. The guest command's exit code is propagated.

    kernel        which guest kernel (RXE_POWER_VM_KERNEL overrides)
    tools         vng, qemu and a static busybox on this host
    accel         KVM or TCG: a probe boot decides, cached per host boot
                  (RXE_POWER_VM_ACCEL overrides)
    process       a bounded process group with a console log
    python_copy   the guest imports from a copy of the Python trees in its memory
    runner        VmRequest -> run_in_vm -> VmResult
    command_line  ``python -m harness.vm [--timeout-s N] [--rwdir DIR]... -- CMD...``
"""
