"""Benchmarks: Durable's throughput and latency, side by side with DBOS Transact (``bench.bench_engine``)."""
