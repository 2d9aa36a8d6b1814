"""rxe-power bench: the harness's own client next to perftest, and what a sleep costs.

    rxe-power bench [--sizes 64,4096,65536] [--queue-depth 64] [--scale F] [--cycles 10]
                    [--stress-cycles 5] [--qps 1024] [--qp-workers 8] [--only S,..]

In one run, on the same rxe0 <-> rxe1 pair (in the VM when this kernel has no rxe):

- throughput: the harness client (one worker process, the one I/O path of every
  policy, with its ledger and the peer agent checking every message) against
  `ib_send_bw` (harness SEND_WITH_IMM) and `ib_write_bw` (harness RDMA_WRITE_WITH_IMM)
  at each size, same queue depth, one QP; MB/s as perftest prints it (2^20 bytes/s)
  and messages/s, as ratios harness / perftest;
- latency at queue depth 1: post -> completion of every request from the ledger
  (median, p99), completions by event (the default) and by polling, next to
  `ib_write_lat` / `ib_send_lat` (which busy-poll and print half a ping-pong round trip);
- the standby cycle part by part over repeated cycles (median, min/max, IQR):
  quiesce (suspend notice -> the client's release), port down, delete, hold, re-create,
  port up, resume notice -> the clients' reconnect, first successful completion after
  resume, and the whole (suspend notice -> the last client's first success);
- stress cycles per minute (a short `rxe-power stress`);
- one standby under 1,024 QPs spread over several workers, the ledger holding;
- the machine load with the figures (load average, CPUs, other QEMUs on the host).

perftest prints no JSON: its result table is parsed by its header columns
(`parse_perftest`), and an unexpected format is an error naming what is missing.
A run with any error is FAILED with its cause and no figures. Every subprocess is
bounded, and every section (its ..._SECTION_TIMEOUT_S). The figures go to the terminal
and to DIR/bench.json.

    spec                BenchSpec: sections, sizes, counts, the sections' bounds
    bounds              SectionBound: a section's bound, clipping its steps' timeouts
    failures            why a run is not a figure (ledger, the peer's events, perftest)
    perftest            perftest's command lines, a bounded run, its table parsed
    client_vs_perftest  throughput and latency, harness client next to perftest
    standby_cycle       the standby cycle part by part
    stress_rate         stress cycles per minute
    qp_scale            one standby under many QPs
    record              bench.json, the machine load, the targets
    series              percentiles, median and quartiles
    run                 run_bench: the sections on one run session
    provenance          what made a results file (command, date, commit, machine, module)
    tracer_overhead     the verbs tracer's overhead (python -m ...; docs/measurements/)
    steering            rxe's retries with and without receive packet steering (python -m)
"""
