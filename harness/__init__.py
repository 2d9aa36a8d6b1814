"""rxe-power harness: real Soft-RoCE topology, verbs resources, peer agent, VM runner.

Modules by role:
  errors      - the error types every stage raises (problem + fix, errno text)
  settings    - option resolution (CLI > environment > ini) with provenance
  cmdjson     - running `ip -j` / `rdma -j` and parsing their JSON into records
  topology    - the two-HCA topology (rxe0 <-> veth wire <-> rxe1): setup,
                discovery, teardown, state file of what we created
  vm          - the virtme-ng runner used when the host kernel has no rdma_rxe
  modes       - native / vm / auto selection for the CLI commands
  verbs       - pyverbs resources as context managers, QP state machine,
                completion waiting that never blocks while holding the GIL
  payload     - sequence number + checksum framing of every message
  protocol    - the (event, payload) JSON protocol between controller and agent
  peer_agent  - the stand-alone remote peer process bound to rxe1
  peer        - the controller side of the peer agent
  cm          - the rdma_cm connection path
  traffic     - the traffic check behind `rxe-power run`
  plugin      - the pytest plugin (options, markers, fixtures only)
  cli         - `rxe-power` main(argv)
"""
