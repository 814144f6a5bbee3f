"""The shared uint8 batch ring: slots are reused, and never before the main process released them."""

import threading
import time

from pipeline.data.batch_ring import BatchRing, new_release_counters


def test_slots_are_reused_only_after_release():
    released = new_release_counters(2)
    ring = BatchRing(released, worker=1, slots=2)
    first, slot0 = ring.buffer((2, 3))
    second, slot1 = ring.buffer((2, 3))
    assert (slot0, slot1) == (0, 1) and first.data_ptr() != second.data_ptr()
    assert first.is_shared()

    def release_later():
        time.sleep(0.3)
        released[1] += 1

    threading.Thread(target=release_later).start()
    started = time.monotonic()
    third, slot2 = ring.buffer((2, 3))  # slot 0 again: must wait for batch 0 to be released
    assert time.monotonic() - started >= 0.25
    assert slot2 == 0 and third.data_ptr() == first.data_ptr()
    assert int(released[0]) == 0  # other workers' counters untouched


def test_a_larger_batch_gets_a_larger_buffer():
    ring = BatchRing(new_release_counters(1), worker=0, slots=1)
    small, _ = ring.buffer((2, 2))
    ring.released[0] += 1
    big, _ = ring.buffer((4, 4))
    assert big.shape == (4, 4) and big.numel() > small.numel()
