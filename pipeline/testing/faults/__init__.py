"""The fault-injection scenarios: each injects failures into real `vssl` runs and returns a
tally.Report of what it tried, what it injected and which guarantees broke.

    prep.shard_corpus(tmp)                      broken inputs through `vssl shard`
    loading.train_on_damaged_shards(tmp)        damaged shards through the loader and `vssl pretrain`
    security.hostile_shards(tmp) / hostile_files(tmp, checkpoint, recipe)   untrusted files run nothing
    config_errors.bad_configs(setup)            bad configuration: exit 2, one line
    training.kill_and_resume(setup, seeds) ...  kills, a full disk, a NaN loss (setup = training.TrainSetup.make(tmp))
    distributed.lost_peer(setup, "kill"|"stop") a two-process job losing a peer

tests/faults/test_faults_*.py assert that every report is ok; `python -m benchmarks faults` runs the
same scenarios and adds up their counts.
"""
