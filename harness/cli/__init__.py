"""The `rxe-power` command line (harness.cli.main: the parser and main(argv)).

One module per command group: results_commands (run, matrix, stress, report),
bench_command, suite (test), maintenance (check, cleanup, setup, teardown, show),
power_commands (transition, recover), doctor (its pyverbs import in a child:
pyverbs_probe); launch says where a command can run (this kernel or the VM),
invocation makes a command's choices once (mode, removal mode, results folder, its typed
job), operations runs it (NativeOperations, VmOperations), guest is the guest's side (the
invocation file in, NativeOperations).
"""
