//! The container's own limits, read from its cgroup: in a pod `/proc/meminfo` and the CPU count describe the
//! node, not the container. cgroup v2 (`memory.max`, `memory.current`, `cpu.max`) and v1
//! (`memory.limit_in_bytes` / `hierarchical_memory_limit`, `cpu.cfs_quota_us` / `cpu.cfs_period_us`), whichever
//! hierarchy the process is in; a limit set on an ancestor counts too (the tightest one wins).
//!
//! Everything reads below a root directory, so tests run the same code over fixture trees.

use std::path::{Path, PathBuf};

/// Which cgroup hierarchy a limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// The memory side of the process's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub version: Version,
    /// The tightest limit on the cgroup and its ancestors; `None` when unlimited.
    pub limit: Option<u64>,
    /// Memory of the cgroup that the kernel cannot reclaim: anonymous + shared memory (page cache is not
    /// counted: it is dropped before anything is OOM-killed).
    pub unreclaimable: u64,
}

/// The CPU side: `quota / period` cores, `None` when unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLimit {
    pub version: Version,
    pub cores: Option<f64>,
}

/// What the process's cgroups say.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub memory: Option<MemoryLimit>,
    pub cpu: Option<CpuLimit>,
}

/// Values at or above this are "no limit" (v1 writes 2^63 rounded down to a page).
const UNLIMITED: u64 = 1 << 62;

impl Limits {
    /// This process's limits (`/proc/self/cgroup`, `/proc/self/mountinfo`, `/sys/fs/cgroup`).
    pub fn current() -> Limits {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Limits::read(
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
            Path::new("/"),
        )
    }

    /// Limits from the text of `/proc/self/cgroup` and `/proc/self/mountinfo`, with the mount points found
    /// under `root` (`/` for the real system, a fixture directory in tests).
    pub fn read(proc_cgroup: &str, mountinfo: &str, root: &Path) -> Limits {
        let mounts = parse_mounts(mountinfo);
        let memory = match locate(proc_cgroup, &mounts, Some("memory"), root) {
            Some((dir, top)) => read_memory_v1(&dir, &top),
            None => locate(proc_cgroup, &mounts, None, root)
                .and_then(|(dir, top)| read_memory_v2(&dir, &top)),
        };
        let cpu = match locate(proc_cgroup, &mounts, Some("cpu"), root) {
            Some((dir, top)) => read_cpu(&dir, &top, Version::V1),
            None => locate(proc_cgroup, &mounts, None, root)
                .and_then(|(dir, top)| read_cpu(&dir, &top, Version::V2)),
        };
        Limits { memory, cpu }
    }

    /// Whole cores the quota allows (rounded down, at least 1), if there is a quota.
    pub fn cpu_threads(&self) -> Option<usize> {
        let cores = self.cpu?.cores?;
        Some((cores.floor() as usize).max(1))
    }
}

struct Mount {
    /// The hierarchy's path mounted there (`/` on the host; the container's own path under a cgroup
    /// namespace it does not match).
    root: String,
    point: String,
    /// `None` for cgroup2, else the v1 controllers (`cpu`, `cpuacct`, `memory`, …).
    controllers: Option<Vec<String>>,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let options = post.next().unwrap_or("");
            let (root, point) = (pre.get(3)?, pre.get(4)?);
            let controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(options.split(',').map(str::to_owned).collect()),
                _ => return None,
            };
            Some(Mount {
                root: unescape(root),
                point: unescape(point),
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The directory of this process's cgroup for a v1 `controller` (or the v2 hierarchy when `None`), and the
/// mount point above which limits are not visible.
fn locate(
    proc_cgroup: &str,
    mounts: &[Mount],
    controller: Option<&str>,
    root: &Path,
) -> Option<(PathBuf, PathBuf)> {
    let path = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match controller {
            None => id == "0" && list.is_empty(),
            Some(c) => list.split(',').any(|x| x == c),
        };
        wanted.then(|| path.to_owned())
    })?;
    let mount = mounts.iter().find(|m| match (controller, &m.controllers) {
        (None, None) => true,
        (Some(c), Some(list)) => list.iter().any(|x| x == c),
        _ => false,
    })?;
    let top = root.join(mount.point.trim_start_matches('/'));
    // Inside a container the mount is the container's own cgroup and `path` may still be the full host
    // path (no cgroup namespace): the mount point itself is then the process's cgroup.
    let rel = match path.strip_prefix(mount.root.trim_end_matches('/')) {
        Some(rel) if rel.is_empty() || rel.starts_with('/') => rel.trim_start_matches('/'),
        _ => "",
    };
    let dir = top.join(rel);
    let dir = if dir.is_dir() { dir } else { top.clone() };
    top.is_dir().then_some((dir, top))
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// The directories from `dir` up to `top`, both included.
fn ancestors(dir: &Path, top: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut d = dir;
    while d != top {
        match d.parent() {
            Some(p) if p.starts_with(top) => {
                out.push(p.to_path_buf());
                d = p;
            }
            _ => break,
        }
    }
    out
}

fn read_memory_v1(dir: &Path, top: &Path) -> Option<MemoryLimit> {
    let stat = std::fs::read_to_string(dir.join("memory.stat")).ok();
    // hierarchical_memory_limit already folds in the ancestors' limits; walk up when it is absent.
    let limit = stat
        .as_deref()
        .and_then(|s| stat_field(s, "hierarchical_memory_limit"))
        .or_else(|| {
            ancestors(dir, top)
                .iter()
                .filter_map(|d| read_u64(&d.join("memory.limit_in_bytes")))
                .min()
        })?;
    let unreclaimable = stat.as_deref().map_or(0, |s| {
        let f = |names: [&str; 2]| names.iter().find_map(|n| stat_field(s, n)).unwrap_or(0);
        f(["total_rss", "rss"]) + f(["total_shmem", "shmem"])
    });
    Some(MemoryLimit {
        version: Version::V1,
        limit: (limit < UNLIMITED).then_some(limit),
        unreclaimable,
    })
}

fn read_memory_v2(dir: &Path, top: &Path) -> Option<MemoryLimit> {
    if !dir.join("memory.max").exists() && !dir.join("memory.current").exists() {
        return None; // the memory controller is not enabled here
    }
    let limit = ancestors(dir, top)
        .iter()
        .filter_map(|d| {
            let text = std::fs::read_to_string(d.join("memory.max")).ok()?;
            text.trim().parse::<u64>().ok()
        })
        .min();
    let unreclaimable = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .map_or(0, |s| {
            stat_field(&s, "anon").unwrap_or(0) + stat_field(&s, "shmem").unwrap_or(0)
        });
    Some(MemoryLimit {
        version: Version::V2,
        limit: limit.filter(|l| *l < UNLIMITED),
        unreclaimable,
    })
}

fn read_cpu(dir: &Path, top: &Path, version: Version) -> Option<CpuLimit> {
    let quota_of = |d: &Path| -> Option<f64> {
        match version {
            Version::V2 => {
                let text = std::fs::read_to_string(d.join("cpu.max")).ok()?;
                let mut it = text.split_whitespace();
                let (quota, period) = (it.next()?, it.next().unwrap_or("100000"));
                let (q, p): (f64, f64) = (quota.parse().ok()?, period.parse().ok()?);
                (q > 0.0 && p > 0.0).then_some(q / p)
            }
            Version::V1 => {
                let q: i64 = std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                let p: i64 = std::fs::read_to_string(d.join("cpu.cfs_period_us"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                (q > 0 && p > 0).then_some(q as f64 / p as f64)
            }
        }
    };
    let file = match version {
        Version::V2 => "cpu.max",
        Version::V1 => "cpu.cfs_quota_us",
    };
    if !dir.join(file).exists() {
        return None;
    }
    let cores = ancestors(dir, top)
        .iter()
        .filter_map(|d| quota_of(d))
        .min_by(|a, b| a.total_cmp(b));
    Some(CpuLimit { version, cores })
}

#[cfg(test)]
mod tests;
