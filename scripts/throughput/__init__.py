"""``scripts/bench``: the throughput and latency benchmark (see ``run.py``)."""
