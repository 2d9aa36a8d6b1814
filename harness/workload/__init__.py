"""The workload and its accounting, pure logic: the workload spec and its requests
(spec), outcomes and the one table of outcome rules (outcomes), a request's record
(entries), the controller's ledger (ledger), the client worker's flat ledger (recorder)
and the pages of columns that carry it between them (pages).
"""
