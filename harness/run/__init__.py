"""Running things under the shim: scenarios (client workers around one transition),
the matrix, stress, the benchmark, and the results file they write.
"""
