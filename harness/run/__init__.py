"""Running things under the shim: scenarios (client workers around one transition),
the matrix, stress, the benchmark (bench/), the run session the three share (session:
topology, peer agent, private clients directory, shim) and the results file they write.
"""
