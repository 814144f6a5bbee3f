"""Test support that ships with the package, for the tests and the benchmarks alike (benchmarks/
never import tests/). Nothing in a training or sharding run imports it.

    s3server.py   moto's S3-compatible server in a child process on 127.0.0.1 (S3Server, local_s3)
"""
