"""Benchmarks: one command each, results written up in ``benchmarks/RESULTS.md``.

- ``python -m benchmarks.receiver_bench``: the receiver (auth on, durable acknowledgements) on the local
  directory and on fake-gcs-server, against a bare Flask endpoint under the same gunicorn settings.
- ``python -m benchmarks.pipeline_bench``: DuckDB loads of 100k and 1M synthetic pull events (throughput, peak
  memory) against DuckDB's raw ``read_ndjson`` of the same files, and the landing sensor's tick time with
  100,000 old objects beside 100 new ones.
"""
