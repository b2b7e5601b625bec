"""Threads follow the container's CPU quota: handler.cpus reads cgroup v2 and v1 quotas from a
fake cgroup tree laid out like the kernel's (and like Docker's and Kubernetes')."""
import os

import pytest

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


@pytest.mark.parametrize("flags,bf16,int8", [
    ("fpu sse2 avx avx2 fma", False, False),                                  # AMD EPYC, AVX2 only
    ("avx2 avx512f avx512bw avx512_vnni", False, True),                       # Intel Xeon, VNNI
    ("avx2 avx512f avx512_vnni avx512_bf16", True, True),                     # AMD EPYC, AVX512-BF16
    ("avx2 avx_vnni", False, True),                                           # AVX-VNNI without AVX-512
    ("avx2 amx_bf16 amx_int8 amx_tile", True, True),                          # Sapphire Rapids
])
def test_native_bf16_and_int8_come_from_the_cpu_flags(tmp_path, flags, bf16, int8):
    """What `cpu_precision: auto` may pick on each CPU kind we meet: bf16 only in hardware, the
    int8 model only with int8 dot products (on AVX2 alone it is slower than f32)."""
    from handler.cpus import native_bf16, native_int8
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert (native_bf16(cpuinfo), native_int8(cpuinfo)) == (bf16, int8)
    assert native_int8(tmp_path / "missing") is False
