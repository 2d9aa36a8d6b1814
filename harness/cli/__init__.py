"""The `rxe-power` command line (harness.cli.main: the parser and main(argv)).

One module per command group: results_commands (run, matrix, stress, report),
bench_command, suite (test), maintenance (check, cleanup, setup, teardown, show),
power_commands (transition, recover), doctor (its pyverbs import in a child:
pyverbs_probe); launch says where a command runs (this kernel or the VM) and how it
runs again in the guest (`python -m harness.cli`).
"""
