import numpy as np
import pytest

from pipeline.data.sampling import ClipSampling, union_indices


def rng(seed=0):
    return np.random.default_rng(seed)


def test_random_clip_is_strided_and_inside_the_video():
    s = ClipSampling("random", num_frames=8, frame_stride=4)
    starts = set()
    for seed in range(50):
        (clip,) = s.clips_for(100, 25.0, rng(seed))
        assert len(clip) == 8 and (np.diff(clip) == 4).all()
        assert clip[0] >= 0 and clip[-1] < 100
        starts.add(int(clip[0]))
    assert len(starts) > 10 and max(starts) <= 100 - 29


def test_short_video_repeats_the_last_frame():
    (clip,) = ClipSampling("random", num_frames=8, frame_stride=4).clips_for(10, 25.0, rng())
    assert clip.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]


def test_segment_sampling_takes_one_frame_per_segment():
    s = ClipSampling("segment", num_frames=8)
    for seed in range(20):
        (clip,) = s.clips_for(80, 25.0, rng(seed))
        assert ((clip // 10) == np.arange(8)).all()
    (mid,) = ClipSampling("segment", num_frames=8, train=False).clips_for(80, 25.0, rng())
    assert mid.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]


def test_fps_sampling_steps_by_time():
    s = ClipSampling("fps", num_frames=4, target_fps=10.0)
    (clip,) = s.clips_for(200, 30.0, rng())
    assert (np.diff(clip) == 3).all()
    (clip,) = s.clips_for(200, 25.0, rng(1))
    assert set(np.diff(clip).tolist()) <= {2, 3}  # 2.5 source frames per output frame
    with pytest.raises(ValueError, match="target_fps"):
        ClipSampling("fps", num_frames=4)


def test_multiview_eval_is_deterministic_and_spread():
    s = ClipSampling("random", num_frames=4, frame_stride=2, clips=3, train=False)
    views = s.clips_for(50, 25.0, rng(0))
    assert [v.tolist() for v in views] == [v.tolist() for v in s.clips_for(50, 25.0, rng(9))]
    assert views[0][0] == 0 and views[-1][-1] == 49 and views[1][0] == (50 - 7) // 2
    seg = ClipSampling("segment", num_frames=4, clips=2, train=False).clips_for(40, 25.0, rng())
    assert [v.tolist() for v in seg] == [[2, 12, 22, 32], [7, 17, 27, 37]]


def test_repeated_sampling_draws_independent_clips_from_one_union():
    clips = ClipSampling("random", num_frames=8, frame_stride=2, clips=4).clips_for(64, 25.0, rng(3))
    assert len(clips) == 4 and len({c[0] for c in clips}) > 1
    frames, where = union_indices(clips)
    assert (np.diff(frames) > 0).all()
    for clip, pos in zip(clips, where):
        assert (frames[pos] == clip).all()


def test_unknown_mode():
    with pytest.raises(ValueError, match="must be one of random, segment, fps"):
        ClipSampling("dense")
