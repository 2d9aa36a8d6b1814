"""Verbs resources (pyverbs), the rdma_cm client, payload framing, verbs enum names.
"""
