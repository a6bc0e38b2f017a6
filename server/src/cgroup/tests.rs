//! Fixture cgroup trees (v1 and v2, limited and unlimited, host and container views) through the same reader
//! the server runs.

use super::*;

const MIB: u64 = 1 << 20;

/// A fixture root: files written below a fresh directory, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("llama-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture dir");
        Tree(dir)
    }

    fn file(&self, path: &str, text: &str) -> &Tree {
        let p = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write fixture");
        self
    }

    fn read(&self, proc_cgroup: &str, mountinfo: &str) -> Limits {
        Limits::read(proc_cgroup, mountinfo, &self.0)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const V1_POD: &str = "\
5:memory:/kubepods/burstable/pod1/ctr
3:cpu,cpuacct:/kubepods/burstable/pod1/ctr
0::/
";

/// The layout a kubelet with the cgroupfs driver makes on a cgroup v1 node (this machine's real node): the
/// container's limit, the pod's limit above it, and the host's view of both.
#[test]
fn v1_pod_limits_and_quota_are_read_from_the_containers_cgroup() {
    let t = Tree::new("v1");
    let ctr = "/sys/fs/cgroup/memory/kubepods/burstable/pod1/ctr";
    t.file(&format!("{ctr}/memory.limit_in_bytes"), "536870912\n")
        .file(
            &format!("{ctr}/memory.stat"),
            "cache 104857600\nrss 10485760\nshmem 0\nhierarchical_memory_limit 536870912\n\
             total_cache 104857600\ntotal_rss 10485760\ntotal_shmem 1048576\n",
        )
        .file(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
    let cpu = "/sys/fs/cgroup/cpu,cpuacct/kubepods/burstable/pod1/ctr";
    t.file(&format!("{cpu}/cpu.cfs_quota_us"), "150000\n")
        .file(&format!("{cpu}/cpu.cfs_period_us"), "100000\n");
    let l = t.read(V1_POD, V1_MOUNTS);
    assert_eq!(
        l.memory,
        Some(MemoryLimit {
            version: Version::V1,
            limit: Some(512 * MIB),
            unreclaimable: 11 * MIB, // rss + shmem; the 100 MiB of page cache is reclaimable
        })
    );
    assert_eq!(
        l.cpu,
        Some(CpuLimit {
            version: Version::V1,
            cores: Some(1.5)
        })
    );
    assert_eq!(l.cpu_threads(), Some(1), "1.5 cores round down to 1 thread");
}

/// Without `hierarchical_memory_limit` (older kernels' stat), the tightest limit up the tree wins; a pod-level
/// CPU quota below the container's counts too.
#[test]
fn v1_limits_set_on_an_ancestor_count() {
    let t = Tree::new("v1-ancestor");
    let pod = "/sys/fs/cgroup/memory/kubepods/burstable/pod1";
    t.file(&format!("{pod}/memory.limit_in_bytes"), "268435456\n")
        .file(
            &format!("{pod}/ctr/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .file(&format!("{pod}/ctr/memory.stat"), "rss 4096\n");
    let cpu = "/sys/fs/cgroup/cpu,cpuacct/kubepods/burstable/pod1";
    t.file(&format!("{cpu}/cpu.cfs_quota_us"), "300000\n")
        .file(&format!("{cpu}/cpu.cfs_period_us"), "100000\n")
        .file(&format!("{cpu}/ctr/cpu.cfs_quota_us"), "-1\n")
        .file(&format!("{cpu}/ctr/cpu.cfs_period_us"), "100000\n");
    let l = t.read(V1_POD, V1_MOUNTS);
    let m = l.memory.expect("memory controller");
    assert_eq!((m.limit, m.unreclaimable), (Some(256 * MIB), 4096));
    assert_eq!(l.cpu_threads(), Some(3));
}

/// Inside a container without a cgroup namespace, `/proc/self/cgroup` names the host path but the mount shows
/// only the container's own directory: the mount point is the cgroup.
#[test]
fn v1_inside_a_container_the_mount_point_is_the_cgroup() {
    let t = Tree::new("v1-ctr");
    let mounts = "\
800 700 0:32 /kubepods/burstable/pod1/ctr /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
801 700 0:29 /kubepods/burstable/pod1/ctr /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
";
    t.file(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "1073741824\n",
    )
    .file(
        "/sys/fs/cgroup/memory/memory.stat",
        "rss 2097152\nhierarchical_memory_limit 1073741824\ntotal_rss 2097152\n",
    )
    .file("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
    .file("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    let l = t.read(V1_POD, mounts);
    assert_eq!(l.memory.and_then(|m| m.limit), Some(1024 * MIB));
    assert_eq!(l.memory.map(|m| m.unreclaimable), Some(2 * MIB));
    assert_eq!(l.cpu_threads(), Some(2));
    // A docker-style bind mount whose root says `/` while only the container's files are there.
    let mounts = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    assert_eq!(
        t.read(V1_POD, mounts).memory.and_then(|m| m.limit),
        Some(1024 * MIB)
    );
}

/// No limit at all (this machine outside a pod): the v1 "unlimited" sentinel and a quota of -1.
#[test]
fn v1_unlimited_is_no_limit() {
    let t = Tree::new("v1-unlimited");
    t.file(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "9223372036854771712\n",
    )
    .file(
        "/sys/fs/cgroup/memory/memory.stat",
        "rss 1822720\nhierarchical_memory_limit 9223372036854771712\ntotal_rss 1822720\n",
    )
    .file("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    .file("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    let l = t.read("5:memory:/\n3:cpu,cpuacct:/\n0::/\n", V1_MOUNTS);
    let m = l.memory.expect("memory controller");
    assert_eq!((m.version, m.limit), (Version::V1, None));
    assert_eq!(l.cpu.map(|c| c.cores), Some(None));
    assert_eq!(l.cpu_threads(), None);
}

const V2_MOUNTS: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

/// cgroup v2 with the systemd driver, host view: the pod's limit (512 MiB) is tighter than the container's
/// (1 GiB); the container's quota is 2.5 cores under an unlimited pod.
#[test]
fn v2_limits_are_the_tightest_up_the_tree() {
    let t = Tree::new("v2");
    let pod = "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice";
    let ctr = format!("{pod}/cri-containerd-abc.scope");
    t.file(&format!("{pod}/memory.max"), "536870912\n")
        .file(&format!("{pod}/cpu.max"), "max 100000\n")
        .file(&format!("{ctr}/memory.max"), "1073741824\n")
        .file(&format!("{ctr}/memory.current"), "200000000\n")
        .file(
            &format!("{ctr}/memory.stat"),
            "anon 20971520\nfile 104857600\nshmem 1048576\n",
        )
        .file(&format!("{ctr}/cpu.max"), "250000 100000\n")
        .file("/sys/fs/cgroup/memory.max", "max\n"); // the root has no limit file in real trees; harmless
    let l = t.read(
        "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope\n",
        V2_MOUNTS,
    );
    assert_eq!(
        l.memory,
        Some(MemoryLimit {
            version: Version::V2,
            limit: Some(512 * MIB),
            unreclaimable: 21 * MIB,
        })
    );
    assert_eq!(
        l.cpu,
        Some(CpuLimit {
            version: Version::V2,
            cores: Some(2.5)
        })
    );
    assert_eq!(l.cpu_threads(), Some(2));
}

/// cgroup v2 under a cgroup namespace (containerd's default on v2): `0::/`, the mount is the container's
/// cgroup; `max` means no limit; a quota below one core still gives one thread.
#[test]
fn v2_in_a_namespace_and_unlimited() {
    let t = Tree::new("v2-ns");
    t.file("/sys/fs/cgroup/memory.max", "max\n")
        .file("/sys/fs/cgroup/memory.stat", "anon 1048576\nshmem 0\n")
        .file("/sys/fs/cgroup/cpu.max", "max 100000\n");
    let l = t.read("0::/\n", V2_MOUNTS);
    assert_eq!(
        l.memory.map(|m| (m.limit, m.unreclaimable)),
        Some((None, MIB))
    );
    assert_eq!(l.cpu_threads(), None);
    t.file("/sys/fs/cgroup/memory.max", "2147483648\n")
        .file("/sys/fs/cgroup/cpu.max", "50000 100000\n");
    let l = t.read("0::/\n", V2_MOUNTS);
    assert_eq!(l.memory.and_then(|m| m.limit), Some(2048 * MIB));
    assert_eq!(l.cpu_threads(), Some(1), "half a core is still one thread");
}

/// A hybrid host (v1 controllers plus an empty v2 tree, as this machine) uses v1; no cgroup files at all (not
/// Linux, or /sys not mounted) is "no limits", not an error.
#[test]
fn hybrid_hosts_use_v1_and_missing_files_mean_no_limits() {
    let t = Tree::new("hybrid");
    t.file("/sys/fs/cgroup/memory/memory.limit_in_bytes", "104857600\n")
        .file("/sys/fs/cgroup/unified/cgroup.procs", "");
    let l = t.read("5:memory:/\n0::/\n", V1_MOUNTS);
    assert_eq!(
        l.memory.map(|m| (m.version, m.limit)),
        Some((Version::V1, Some(100 * MIB)))
    );
    assert_eq!(Limits::read("", "", &t.0), Limits::default());
    let empty = Tree::new("empty");
    assert_eq!(empty.read(V1_POD, V1_MOUNTS), Limits::default());
}

#[test]
fn mountinfo_escapes_are_decoded() {
    assert_eq!(unescape(r"/a\040b"), "/a b");
    assert_eq!(unescape("/plain"), "/plain");
}
