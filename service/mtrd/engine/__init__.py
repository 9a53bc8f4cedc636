"""The probe engine: probe values, mtr-packet's wire format, the sequence ledger, one
mtr-packet process (worker) and the supervised pool that every caller shares.

It knows nothing of traces, HTTP or JSON, and imports nothing else of mtrd.
"""
