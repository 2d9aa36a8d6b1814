"""The remote peer: its agent process on the peer HCA (agent.py, imports nothing of
the controller), the controller side (controller.py), and the traffic and rdma_cm
checks that use both ends.
"""
