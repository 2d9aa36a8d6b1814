"""The remote peer: its agent process on the peer HCA (agent.py, with its QPs in
agent_qp.py and its request dispatch in dispatch.py; it imports nothing of the
controller), the controller side (controller.py), and the traffic and rdma_cm checks
that use both ends.
"""
