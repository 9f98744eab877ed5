//! Who is on the other end of a connection, and what they may do: the peer's
//! credentials (`SO_PEERCRED` uid, gid and pid, and `SO_PEERGROUPS` supplementary
//! groups, as the kernel recorded them at connect), the `[access]` section that lists
//! users and groups per role, and the role a peer has under it. Root and oetd's own user
//! have every role.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, PoisonError, RwLock};

use nix::unistd::{Gid, Group, Uid, User};
use oet_protocol::Role;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// The `[access]` section: who has which role, besides root and oetd's own user, who
/// have all. Users and groups are names or numeric ids. A role includes the ones below
/// it (admin > operate > read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Who may read (status, list, describe, logs, listen). Both lists empty: anyone
    /// who can connect to the socket.
    pub read_users: Vec<String>,
    pub read_groups: Vec<String>,
    /// Who may operate (create, start, stop, activity run, put-sbd).
    pub operate_users: Vec<String>,
    pub operate_groups: Vec<String>,
    /// Who may administer (reload, maintenance).
    pub admin_users: Vec<String>,
    pub admin_groups: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            read_users: Vec::new(),
            read_groups: Vec::new(),
            operate_users: Vec::new(),
            operate_groups: vec!["oet".into()],
            admin_users: Vec::new(),
            admin_groups: Vec::new(),
        }
    }
}

impl AccessConfig {
    /// Checks the names without looking them up; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let lists = [
            ("access.read_users", &self.read_users),
            ("access.read_groups", &self.read_groups),
            ("access.operate_users", &self.operate_users),
            ("access.operate_groups", &self.operate_groups),
            ("access.admin_users", &self.admin_users),
            ("access.admin_groups", &self.admin_groups),
        ];
        for (key, names) in lists {
            if let Some(bad) = names.iter().find(|name| name.trim().is_empty()) {
                return Err(format!("{key} holds an empty name ({bad:?})"));
            }
        }
        Ok(())
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// Supplementary groups, as the kernel recorded them at connect.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The peer of `stream`, as the kernel recorded it at connect.
    pub fn of(stream: &UnixStream) -> Peer {
        let Ok(cred) = stream.peer_cred() else {
            return Peer::default();
        };
        let mut peer = Peer {
            uid: Some(cred.uid()),
            gid: Some(cred.gid()),
            pid: cred.pid(),
            groups: Vec::new(),
        };
        match peer_groups(stream) {
            Ok(groups) => peer.groups = groups,
            Err(err) => tracing::debug!(
                "the supplementary groups of {} are unknown: {err}",
                peer.describe()
            ),
        }
        peer
    }

    /// `uid 1001 (pid 42)`, for messages.
    pub fn describe(&self) -> String {
        let uid = self.uid.map_or("?".into(), |u| u.to_string());
        let pid = self.pid.map_or("?".into(), |p| p.to_string());
        format!("uid {uid} (pid {pid})")
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups. Not in the `libc` crate
/// for Linux; 59 is the generic value (x86, arm, riscv, ...), SPARC's differs.
#[cfg(not(target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(target_arch = "sparc64")]
const SO_PEERGROUPS: libc::c_int = 0x003d;

/// The supplementary groups of the peer of `stream`, as the kernel recorded them when
/// it connected (`SO_PEERGROUPS`): neither a reused PID nor a `/proc` hidden from oetd
/// (`ProtectProc=invisible`) can mislead or blind it.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    const ID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * ID) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes, and getsockopt writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / ID);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // Too small a buffer: `len` says how much is needed (at most NGROUPS_MAX ids).
        let needed = len as usize / ID;
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// Users and groups, resolved to ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Members {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl Members {
    fn includes(&self, peer: &Peer) -> bool {
        peer.uid.is_some_and(|uid| self.uids.contains(&uid))
            || peer.gid.is_some_and(|gid| self.gids.contains(&gid))
            || peer.groups.iter().any(|gid| self.gids.contains(gid))
    }

    fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }
}

/// The roles in effect; a configuration reload replaces them. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<RwLock<Roles>>,
    /// oetd's own uid, which has every role.
    own_uid: u32,
}

#[derive(Debug, Default)]
struct Roles {
    read: Members,
    operate: Members,
    admin: Members,
}

impl Access {
    /// The roles of `config`, and one warning for each name that names no user or group
    /// on this host (such a name gives no one a role).
    pub fn new(config: &AccessConfig) -> (Access, Vec<String>) {
        let (roles, warnings) = Roles::resolve(config);
        let access = Access {
            inner: Arc::new(RwLock::new(roles)),
            own_uid: Uid::effective().as_raw(),
        };
        (access, warnings)
    }

    /// Replaces the roles (on reload); returns the warnings as [`Access::new`] does.
    pub fn set(&self, config: &AccessConfig) -> Vec<String> {
        let (roles, warnings) = Roles::resolve(config);
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = roles;
        warnings
    }

    /// The highest role `peer` has, or `None` when it may not even read.
    pub fn role_of(&self, peer: &Peer) -> Option<Role> {
        if peer.uid.is_some_and(|uid| uid == 0 || uid == self.own_uid) {
            return Some(Role::Admin);
        }
        let roles = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if roles.admin.includes(peer) {
            Some(Role::Admin)
        } else if roles.operate.includes(peer) {
            Some(Role::Operate)
        } else if roles.read.is_empty() || roles.read.includes(peer) {
            Some(Role::Read)
        } else {
            None
        }
    }
}

impl Roles {
    /// Resolves the names; a name that is not found is warned about, unless it is a
    /// default (the default group `oet` need not exist).
    fn resolve(config: &AccessConfig) -> (Roles, Vec<String>) {
        let mut found = Vec::new();
        let default = AccessConfig::default();
        let mut members = |users: &[String], groups: &[String], role: &str| {
            let mut warnings = Vec::new();
            let members = Members {
                uids: users
                    .iter()
                    .filter_map(|name| resolve_user(name, role, &mut warnings))
                    .collect(),
                gids: groups
                    .iter()
                    .filter_map(|name| resolve_group(name, role, &mut warnings))
                    .collect(),
            };
            let is_default = role == "operate"
                && users == default.operate_users.as_slice()
                && groups == default.operate_groups.as_slice();
            if !is_default {
                found.extend(warnings);
            }
            members
        };
        let roles = Roles {
            read: members(&config.read_users, &config.read_groups, "read"),
            operate: members(&config.operate_users, &config.operate_groups, "operate"),
            admin: members(&config.admin_users, &config.admin_groups, "admin"),
        };
        (roles, found)
    }
}

fn resolve_user(name: &str, role: &str, warnings: &mut Vec<String>) -> Option<u32> {
    let lookup = |name: &str| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw());
    resolve(name, lookup, || {
        format!("access.{role}_users names {name:?}, which is no user on this host")
    })
    .map_err(|warning| warnings.push(warning))
    .ok()
}

fn resolve_group(name: &str, role: &str, warnings: &mut Vec<String>) -> Option<u32> {
    let lookup = |name: &str| group_id(name).map(Gid::as_raw);
    resolve(name, lookup, || {
        format!("access.{role}_groups names {name:?}, which is no group on this host")
    })
    .map_err(|warning| warnings.push(warning))
    .ok()
}

/// A numeric id as it is, a name through `lookup`; the warning when it names no one.
fn resolve(
    name: &str,
    lookup: impl Fn(&str) -> Option<u32>,
    warning: impl FnOnce() -> String,
) -> Result<u32, String> {
    name.parse::<u32>()
        .ok()
        .or_else(|| lookup(name))
        .ok_or_else(warning)
}

/// The id of group `name`, if it exists.
pub fn group_id(name: &str) -> Option<Gid> {
    match name.parse::<u32>() {
        Ok(gid) => Some(Gid::from_raw(gid)),
        Err(_) => Group::from_name(name).ok().flatten().map(|g| g.gid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn roles_come_from_users_primary_and_supplementary_groups() {
        let config = AccessConfig {
            operate_users: vec!["5001".into()],
            operate_groups: vec!["6000".into()],
            admin_groups: vec!["7000".into()],
            ..AccessConfig::default()
        };
        let (access, _) = Access::new(&config);
        assert_eq!(access.role_of(&peer(0, 0, &[])), Some(Role::Admin));
        assert_eq!(access.role_of(&peer(5001, 100, &[])), Some(Role::Operate));
        assert_eq!(access.role_of(&peer(5002, 6000, &[])), Some(Role::Operate));
        assert_eq!(
            access.role_of(&peer(5003, 100, &[12, 6000])),
            Some(Role::Operate)
        );
        assert_eq!(access.role_of(&peer(5004, 100, &[7000])), Some(Role::Admin));
        assert_eq!(access.role_of(&peer(5005, 100, &[12])), Some(Role::Read));
        assert_eq!(access.role_of(&Peer::default()), Some(Role::Read));

        access.set(&AccessConfig {
            read_users: vec!["5005".into()],
            ..AccessConfig::default()
        });
        assert_eq!(access.role_of(&peer(5005, 100, &[])), Some(Role::Read));
        assert_eq!(access.role_of(&peer(5006, 100, &[])), None);
        assert_eq!(
            access.role_of(&peer(5001, 100, &[])),
            None,
            "reload applied"
        );
    }

    #[test]
    fn unknown_names_are_warned_about() {
        let (_, warnings) = Access::new(&AccessConfig {
            operate_users: vec!["no-such-user-oetd".into()],
            admin_groups: vec!["no-such-group-oetd".into()],
            operate_groups: Vec::new(),
            ..AccessConfig::default()
        });
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("access.operate_users"), "{warnings:?}");
    }
}
