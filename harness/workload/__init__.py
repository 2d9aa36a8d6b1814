"""The workload and its accounting: operations, the workload spec, outcomes and the
per-request ledger. Pure logic.
"""
