"""Threads follow the container's CPU quota: handler.cpus reads cgroup v2 and v1 quotas from a
fake cgroup tree laid out like the kernel's (and like Docker's and Kubernetes')."""
import os

from handler.cpus import cgroup_cpu_quota, usable_cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path, cpu_max: str, nested: str | None = None):
    """/proc/self/cgroup says `0::/kubepods/pod1/ctr`; cpu.max at the container's level (and,
    optionally, a tighter one at the pod's level)."""
    root = tmp_path / "cgroup"
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", cpu_max)
    if nested:
        write(root / "kubepods" / "pod1" / "cpu.max", nested)
    write(root / "cpu.max", "max 100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return root, proc


def test_cgroup_v2_quota_of_one_cpu(tmp_path):
    root, proc = v2_tree(tmp_path, "100000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.0
    assert usable_cpus(root, proc) == 1


def test_cgroup_v2_fractional_and_nested_quotas(tmp_path):
    root, proc = v2_tree(tmp_path, "250000 100000\n", nested="150000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5  # the pod's tighter limit wins
    assert usable_cpus(root, proc) == 1  # rounded down: never more threads than CPU time
    root, proc = v2_tree(tmp_path / "half", "50000 100000\n")
    assert usable_cpus(root, proc) == 1  # at least one thread


def test_cgroup_v2_without_a_limit_uses_the_affinity_mask(tmp_path):
    root, proc = v2_tree(tmp_path, "max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_cgroup_v2_in_a_private_namespace(tmp_path):
    """Inside a container with its own cgroup namespace the path is "/" and cpu.max sits at
    the mount's root (docker run --cpus 1)."""
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "100000 100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")
    assert usable_cpus(root, proc) == 1


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_quota(root, proc) == 2.0
    assert usable_cpus(root, proc) == min(2, len(os.sched_getaffinity(0)))
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_information_falls_back_to_the_affinity_mask(tmp_path):
    assert usable_cpus(tmp_path / "none", tmp_path / "missing") == len(os.sched_getaffinity(0))
