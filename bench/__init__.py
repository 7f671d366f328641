"""Benchmarks for machinery_compat (not part of the installed package).

``python -m bench.redis_bench`` compares producer and worker throughput on a local Redis
with Celery and Go Machinery, ``python -m bench.amqp_bench`` the same on a local RabbitMQ
(results on Redis); ``bench._common`` holds what they share.  See ``bench/README.md``.
"""
