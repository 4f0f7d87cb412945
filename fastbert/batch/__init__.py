"""The ``fastbert encode`` batch job: folder defaults, reading and writing files (fastbert.batch.files),
token-budget batching, progress and distributed runs (fastbert.batch.job)."""
