"""rxe-power harness, in layers (lowest first; a module imports only its own layer or lower
ones, and `lint-imports` checks it in CI):

  core/      errors, settings, state file, process control, IPC channel
  system/    commands, RDMA netlink, network interfaces, GID tables, holders
  topology/  the two-HCA topology (rxe0 <-> wire <-> rxe1) and cleanup
  rdma/      verbs resources, rdma_cm client, payload framing
  peer/ vm/  the remote peer (agent + controller + checks); the QEMU/virtme-ng runner
  workload/  operations, workload spec, outcomes, ledger
  (power/ and clients/ at the top level sit here: the shim, then the client policies)
  run/       scenarios, matrix, stress, bench, results file
  report/    tables, timeline pictures, HTML
  cli/       `rxe-power`, one module per command group
  plugin.py  the pytest plugin (hooks and fixtures only)
"""
