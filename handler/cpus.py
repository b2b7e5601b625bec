"""How many CPUs this process may really use: the CPUs it may run on (sched affinity) capped by
the cgroup CPU quota (`docker run --cpus`, Kubernetes CPU limits). A worker in a 1-CPU container
on a 64-core host sees 64 CPUs in its affinity mask but gets one CPU of time: 64 torch threads
there only fight for it (CFS throttling), so the quota decides.
"""
import math
import os
from pathlib import Path


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cgroup_v2_quota(root: Path, cgroup_path: str) -> float | None:
    """The smallest `cpu.max` quota/period from the process's cgroup up to the root, in CPUs."""
    quotas = []
    directory = root / cgroup_path.lstrip("/")
    while True:
        cpu_max = directory / "cpu.max"
        if cpu_max.is_file():
            quota, _, period = cpu_max.read_text().strip().partition(" ")
            if quota != "max" and period:
                quotas.append(int(quota) / int(period))
        if directory == root or root not in directory.parents:
            break
        directory = directory.parent
    return min(quotas) if quotas else None


def cgroup_v1_quota(root: Path, cgroup_path: str) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us of the cpu controller (-1 means no quota)."""
    for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        for directory in (root / mount / cgroup_path.lstrip("/"), root / mount):
            quota_file = directory / "cpu.cfs_quota_us"
            period_file = directory / "cpu.cfs_period_us"
            if quota_file.is_file() and period_file.is_file():
                quota, period = int(quota_file.read_text()), int(period_file.read_text())
                return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_cpu_quota(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half), None if unlimited."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            quota = cgroup_v2_quota(root, path)
            if quota is not None:
                return quota
        elif "cpu" in controllers.split(","):
            return cgroup_v1_quota(root, path)
    return None


def usable_cpus(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup") -> int:
    """min(CPUs in the affinity mask, the cgroup quota rounded down), at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def cpu_flags(cpuinfo="/proc/cpuinfo") -> set[str]:
    """The words of /proc/cpuinfo (its flags among them); empty where it cannot be read."""
    try:
        return set(Path(cpuinfo).read_text().split())
    except OSError:
        return set()


def native_bf16(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it oneDNN
    emulates bf16, slower than fp32; with it bf16 is faster (measured: docs/PERFORMANCE.md)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def native_int8(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX). Without
    them OpenVINO's int8 model is slower than its f32 one, with them faster (measured:
    docs/PERFORMANCE.md)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_vnni", "avx_vnni", "amx_int8"})


def auto_cpu_precision(cpuinfo="/proc/cpuinfo") -> str:
    return "bf16" if native_bf16(cpuinfo) else "fp32"
