"""Streaming clips out of WebDataset shards for training (entry point: loader.build_loader).

    from pipeline.data.loader import build_loader
    loader = build_loader(cfg.data, rank=rank, world_size=world, patch_size=(2, 16, 16))

    shard_format.py   the shard contract shared with data_prep (tar members + manifest.json)
    shards.py         a data.shards spec -> shards with sample counts
    plan.py           the epoch plan: ranks, streams, shuffle buffer, resampling (pure arithmetic)
    remainder.py      elastic resume: the rest of an epoch re-split over another world/batch size
    tar_reader.py     samples of a shard segment, by position
    decode.py         decord | pyav | torchcodec behind one interface; clip frames only
    decode_process.py decoding bounded in time by a killable helper process
    sampling.py       which frames make a clip (random, segment, fps, multi-view)
    transforms.py     crops, flips, RandAugment on clips with their boxes and masks
    normalize.py      uint8 batches -> normalised float on the training device
    masking.py        tube, random, running-cell and multi-block masks
    dataset.py        the worker side: batches and skip counters
    batch_ring.py     shared uint8 batch buffers between workers and the main process
    loader.py         ClipLoader: epochs, exact resume state, stats

Nothing is imported here, so the decode helper process starts without torch.
"""
