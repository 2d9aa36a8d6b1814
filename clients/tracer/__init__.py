"""The verbs tracer: rxe_power_trace.c (built into build/tracer/ by ci/build-tracer.sh,
loaded with LD_PRELOAD) and its Python side, traced.py (the environment and the trace
directory of a traced program)."""
