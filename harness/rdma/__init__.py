"""Verbs resources (pyverbs: verbs.py), their event fds (event_fds.py), QP data
(qp_types.py), the rdma_cm client (cm.py), payload framing, verbs enum names.
"""
