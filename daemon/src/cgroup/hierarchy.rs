//! Where the cgroup hierarchies are and where this process sits in them, as
//! `/proc/self/mountinfo` and `/proc/self/cgroup` tell — never assumed from fixed paths,
//! since hosts differ (a unified `/sys/fs/cgroup`, or a hybrid host with cgroup v2 at
//! `/sys/fs/cgroup/unified` beside the v1 controllers), and so do namespaces.

use std::path::{Path, PathBuf};

/// A resource controller oetd can give procedures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The controller's name in both versions of the hierarchy.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// Which cgroup of the hierarchy the mount shows at `point` (`/` unless it is a bind
    /// mount of a subtree).
    pub root: String,
    /// `None` for cgroup v2; the controllers of a v1 hierarchy (`name=systemd` included).
    pub v1_controllers: Option<Vec<String>>,
}

/// This process's cgroups: the v2 one, and one per v1 hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub v2: Option<String>,
    /// (the hierarchy's controllers, the cgroup's path).
    pub v1: Vec<(Vec<String>, String)>,
}

/// The cgroup hierarchies mounted in this process's mount namespace.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or_default();
            let v1_controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(
                    options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro"))
                        .filter(|o| !o.contains('=') || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => return None,
            };
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                root: unescape(root),
                v1_controllers,
            })
        })
        .collect()
}

/// Parses `/proc/self/cgroup`: `0::/path` for v2, `N:ctrl,ctrl:/path` for v1.
pub fn membership(text: &str) -> Membership {
    let mut found = Membership::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            found.v2 = Some(path.to_owned());
        } else {
            let controllers = controllers.split(',').map(str::to_owned).collect();
            found.v1.push((controllers, path.to_owned()));
        }
    }
    found
}

/// The directory of cgroup `path` under `mount`, if the mount shows it.
pub fn dir_of(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let below = if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    let below = below.trim_start_matches('/');
    // A path that climbs out of the mount is not below it.
    if Path::new(below)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(mount.point.join(below))
}

/// Where this process's v2 cgroup is, as a directory, if a v2 hierarchy is mounted that
/// shows it; and the directory of its cgroup in the v1 hierarchy of `controller`.
#[derive(Debug, Clone, Default)]
pub struct Places {
    pub v2: Option<PathBuf>,
    /// The cgroup path in the v2 hierarchy, e.g. `/system.slice/oetd.service`.
    pub v2_path: Option<String>,
    pub v1: Vec<(Controller, PathBuf)>,
}

impl Places {
    /// Reads this process's places from `/proc/self`.
    pub fn own() -> std::io::Result<Places> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
        Ok(Places::from_texts(&mountinfo, &cgroups))
    }

    pub fn from_texts(mountinfo: &str, cgroups: &str) -> Places {
        let mounts = mounts(mountinfo);
        let member = membership(cgroups);
        let v2 = member.v2.as_deref().and_then(|path| {
            mounts
                .iter()
                .filter(|m| m.v1_controllers.is_none())
                .find_map(|m| dir_of(m, path))
        });
        let v1 = Controller::ALL
            .into_iter()
            .filter_map(|controller| {
                let name = controller.name().to_owned();
                let (_, path) = member.v1.iter().find(|(c, _)| c.contains(&name))?;
                let dir = mounts
                    .iter()
                    .filter(|m| m.v1_controllers.as_ref().is_some_and(|c| c.contains(&name)))
                    .find_map(|m| dir_of(m, path))?;
                Some((controller, dir))
            })
            .collect();
        Places {
            v2,
            v2_path: member.v2,
            v1,
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(digits) = digits {
            let value = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            if let Ok(value) = u8::try_from(value) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid host, as on this project's build machines: v1 controllers, and v2 at
    /// `/sys/fs/cgroup/unified` with no controllers of its own.
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUPS: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/76d0
1:cpu:/
0::/
";

    #[test]
    fn a_hybrid_host_has_v2_beside_the_v1_controllers() {
        let places = Places::from_texts(HYBRID_MOUNTS, HYBRID_CGROUPS);
        assert_eq!(places.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(places.v2_path.as_deref(), Some("/"));
        assert_eq!(
            places.v1,
            [
                (
                    Controller::Memory,
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/76d0")
                ),
                (Controller::Pids, PathBuf::from("/sys/fs/cgroup/pids")),
                (Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu")),
            ]
        );
    }

    #[test]
    fn a_unified_host_in_a_service() {
        let mounts = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let places = Places::from_texts(mounts, "0::/system.slice/oetd.service\n");
        assert_eq!(
            places.v2,
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/oetd.service"))
        );
        assert!(places.v1.is_empty());
    }

    #[test]
    fn a_mount_of_a_subtree_shows_only_what_is_below_it() {
        let mounts = "25 20 0:22 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let inside = Places::from_texts(mounts, "0::/kubepods/pod1/c1\n");
        assert_eq!(inside.v2, Some(PathBuf::from("/sys/fs/cgroup/c1")));
        let outside = Places::from_texts(mounts, "0::/kubepods/pod10\n");
        assert_eq!(outside.v2, None);
        let climbing = Places::from_texts(mounts, "0::/kubepods/pod1/../pod2\n");
        assert_eq!(climbing.v2, None);
    }

    #[test]
    fn no_cgroup2_mount_means_no_v2_place() {
        let places = Places::from_texts(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n",
            "1:cpu,cpuacct:/user\n0::/\n",
        );
        assert_eq!(places.v2, None);
        assert_eq!(
            places.v1,
            [(Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu/user"))]
        );
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let mounts = mounts("41 31 0:38 / /mnt/cgroup\\040two rw - cgroup2 cgroup2 rw\n");
        assert_eq!(mounts[0].point, PathBuf::from("/mnt/cgroup two"));
    }
}
