"""Test support that ships with the package, for the tests and the benchmarks alike (benchmarks/
never import tests/). Nothing in a training or sharding run imports it.

    s3server.py   moto's S3-compatible server in a child process on 127.0.0.1 (S3Server, local_s3)
    videos.py     small real H.264 test videos made on the fly (moving_frames, write_video)
    shards.py     small real shards that follow pipeline/data/shard_format.py (write_shards, sample_members)
    sharding.py   tiny `vssl shard` inputs and reading what it wrote back (encoded_bytes, read_samples, ...)
    tiny_train.py a tiny recipe and shards, running `vssl pretrain` as a process (tiny_recipe, pretrain_cmd, env)
    faults/       the fault-injection scenarios run by tests/faults and `python -m benchmarks faults`

Because it drives whole runs end to end (make inputs, shard them, train on them), this is the one
package under pipeline/ that imports data_prep/ directly; pipeline's own code never imports it.
ROOT (tiny_train.py) is the folder holding pipeline/: the checkout, where the subprocess-based
scenarios are meant to run.
"""
