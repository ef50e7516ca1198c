"""Benchmarks: one command each, results written up in ``benchmarks/RESULTS.md``.

- ``python -m benchmarks.receiver_bench``: the receiver (auth on, durable acknowledgements) on the local
  directory and on fake-gcs-server, against a bare Flask endpoint under the same gunicorn settings.
"""
