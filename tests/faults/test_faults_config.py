"""Every bad recipe key, type, path or combination: `vssl pretrain` exits 2 with one line naming it."""

from __future__ import annotations

from pipeline.testing.faults.config_errors import CASES, bad_configs


def test_bad_configuration_is_one_line_naming_the_key(train_setup):
    report = bad_configs(train_setup)
    assert report.ok, "\n".join(report.failures)
    assert report.survived == len(CASES) + 3
