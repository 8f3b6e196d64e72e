"""The operations jobs: probes, the quota check, the tuning review, the re-drive of parked blobs.

Siblings that never import each other (an import contract says so); what they share — the run
lock, the status store, the availability result, the timer body — is ``shared.ops.jobs``. Each
receives its runtime (clients, lock, store) from the composition root.
"""
