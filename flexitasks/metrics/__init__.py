"""Fleet metrics: per-call counters kept in Redis, and the Prometheus exporter that reads them.

- ``derive.py``: pure; turns one task run (its ``attempts``, usage and outcome) into
  counter increments and histogram observations, and prices its tokens.
- ``counters.py``: the per-process recorder (increments batched in memory, flushed to
  Redis about once a second by one thread per process) and the readers of the fleet's
  totals and recent rates.
- ``exporter.py``: ``flexitasks metrics``, a Prometheus collector over the breaker state
  and those totals, read from Redis at scrape time.
"""
