"""`vssl pretrain` killed, crashed mid-save, out of disk, fed a NaN: exact resume, previous
checkpoint intact, one clear line."""

from __future__ import annotations

import pytest

from pipeline.testing.faults.training import can_mount_tmpfs, disk_full_injected, disk_full_real, kill_and_resume, nonfinite_loss


def _ok(report):
    assert report.ok, "\n".join(report.failures)
    assert report.hangs == 0


def test_killed_at_random_steps_and_mid_checkpoint_resumes_to_the_same_losses(train_setup):
    report = kill_and_resume(train_setup, seeds=(0, 1))
    _ok(report)
    assert report.counts()["faults_injected"] == 3


@pytest.mark.skipif(not can_mount_tmpfs(), reason="cannot mount a tmpfs in a private mount namespace here")
def test_a_full_disk_keeps_the_previous_checkpoint(train_setup):
    _ok(disk_full_real(train_setup))


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(train_setup):
    _ok(disk_full_injected(train_setup))


def test_a_nonfinite_loss_stops_before_any_poisoned_write(train_setup):
    _ok(nonfinite_loss(train_setup))
