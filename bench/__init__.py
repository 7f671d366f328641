"""Benchmarks for machinery_compat (not part of the installed package).

``python -m bench.redis_bench`` compares producer and worker throughput on a local Redis
with Celery and Go Machinery; see ``bench/README.md``.
"""
