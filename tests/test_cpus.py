"""The bcrypt pool's size: the CPUs the process may use, not the machine's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskservice.security.passwords import available_cpus, cgroup_cpu_quota


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == _affinity()


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000\n", 2), ("5000 100000", 1)],
)
def test_cgroup_v2_cpu_max_is_read_and_rounded_up(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert cgroup_cpu_quota(tmp_path) == expected


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota_is_read(tmp_path: Path, mount: str) -> None:
    (tmp_path / mount).mkdir()
    (tmp_path / mount / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / mount / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 3


def test_cgroup_v1_without_a_quota_is_none(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_malformed_cgroup_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_a_quota_below_the_affinity_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1


def test_a_quota_above_the_affinity_does_not_raise_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text(f"{(_affinity() + 8) * 100000} 100000\n")
    assert available_cpus(tmp_path) == _affinity()


def test_a_process_pinned_to_one_cpu_sizes_for_one() -> None:
    code = (
        "from pathlib import Path\n"
        "from taskservice.security.passwords import available_cpus\n"
        "print(available_cpus(Path('/nonexistent')), available_cpus())\n"
    )
    result = subprocess.run(  # noqa: S603 - fixed arguments
        ["taskset", "-c", "0", sys.executable, "-c", code],  # noqa: S607 - taskset from PATH
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["1", "1"]
