//! From a pod's `containerID` to the host processes of that container, through the cgroup
//! membership the kernel shows in `/proc/<pid>/cgroup` (see docs/decisions.md: it needs no
//! runtime socket and no privilege beyond seeing the host's processes).
//!
//! Shapes matched (one path component, anywhere in the cgroup path, so nested cgroups, a cgroup
//! namespace's `/..` prefix and both hierarchies work):
//! - cgroupfs driver (containerd, CRI-O, Docker): `.../pod<uid>/<id>`;
//! - systemd driver: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`;
//! - CRI-O with cgroupfs: `crio-<id>`.
//!
//! CRI-O's monitor `crio-conmon-<id>.scope` is *not* the container and does not match.

use std::collections::{BTreeMap, BTreeSet};

/// The runtime prefixes of systemd scope names (and CRI-O's cgroupfs names).
const SCOPE_PREFIXES: [&str; 3] = ["cri-containerd-", "crio-", "docker-"];

/// The container id of a pod status `containerID` (`containerd://<64 hex>`, `cri-o://...`,
/// `docker://...`); `None` unless it is 64 lowercase hex digits after a runtime scheme.
pub fn parse_container_id(status_id: &str) -> Option<&str> {
    let (_, id) = status_id.split_once("://")?;
    (id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(id)
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in container `id`.
pub fn in_container(cgroup: &str, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    cgroup.lines().any(|line| {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            return false;
        };
        path.split('/').any(|component| component_is(component, id))
    })
}

fn component_is(component: &str, id: &str) -> bool {
    if component == id {
        return true;
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    SCOPE_PREFIXES
        .iter()
        .any(|prefix| name.strip_prefix(prefix) == Some(id))
}

/// The container's first process among its members (pid → parent pid): the one whose parent is
/// not itself a member (the runtime's shim started it); the lowest such pid if several.
pub fn init_process(members: &BTreeMap<i32, i32>) -> Option<i32> {
    let pids: BTreeSet<i32> = members.keys().copied().collect();
    members
        .iter()
        .find(|(_, parent)| !pids.contains(parent))
        .map(|(pid, _)| *pid)
}

/// The parent pid from a `/proc/<pid>/stat` text (the field after the parenthesised name, which
/// may itself contain spaces and parentheses).
pub fn parent_of_stat(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Host processes of container `id` (pid → parent pid), read from `proc` (`/proc`).
pub fn members(proc: &std::path::Path, id: &str) -> BTreeMap<i32, i32> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A process that exits meanwhile is simply not a member.
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if !in_container(&cgroup, id) {
            continue;
        }
        if let Some(parent) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| parent_of_stat(&s))
        {
            found.insert(pid, parent);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const OTHER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn container_ids_need_a_scheme_and_64_hex() {
        assert_eq!(parse_container_id(&format!("containerd://{ID}")), Some(ID));
        assert_eq!(parse_container_id(&format!("cri-o://{ID}")), Some(ID));
        assert_eq!(parse_container_id(ID), None, "no scheme");
        assert_eq!(parse_container_id("containerd://abc"), None);
        assert_eq!(
            parse_container_id(&format!("containerd://{}", ID.to_uppercase())),
            None
        );
        assert_eq!(parse_container_id("containerd://../../etc/passwd"), None);
        assert_eq!(parse_container_id("containerd://"), None);
    }

    #[test]
    fn cgroup_v1_cgroupfs_lines_as_this_machines_real_node_writes_them() {
        let text = format!(
            "9:name=systemd:/kubepods/besteffort/pod0b4f/{ID}\n8:pids:/kubepods/besteffort/pod0b4f/{ID}\n\
             4:memory:/kubepods/besteffort/pod0b4f/{ID}\n1:cpu:/kubepods/besteffort/pod0b4f/{ID}\n0::/\n"
        );
        assert!(in_container(&text, ID));
        assert!(!in_container(&text, OTHER));
    }

    #[test]
    fn cgroup_v2_systemd_scopes_of_containerd_and_cri_o() {
        let containerd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1d2c.slice/cri-containerd-{ID}.scope\n"
        );
        assert!(in_container(&containerd, ID));
        let crio = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7e.slice/crio-{ID}.scope\n"
        );
        assert!(in_container(&crio, ID));
        // A process in a sub-cgroup of the container (systemd inside it) still belongs to it.
        let nested = format!("0::/kubepods.slice/cri-containerd-{ID}.scope/init.scope\n");
        assert!(in_container(&nested, ID));
        // Seen from inside a cgroup namespace.
        let namespaced =
            format!("0::/../../kubepods-besteffort-pod7e.slice/cri-containerd-{ID}.scope\n");
        assert!(in_container(&namespaced, ID));
        let cgroupfs_v2 = format!("0::/kubepods/burstable/pod1d2c/{ID}\n");
        assert!(in_container(&cgroupfs_v2, ID));
        let crio_cgroupfs = format!("0::/kubepods/pod1d2c/crio-{ID}\n");
        assert!(in_container(&crio_cgroupfs, ID));
    }

    #[test]
    fn lookalikes_do_not_match() {
        // CRI-O's monitor process is not the container.
        let conmon = format!("0::/kubepods.slice/kubepods-pod7e.slice/crio-conmon-{ID}.scope\n");
        assert!(!in_container(&conmon, ID));
        // The pod's cgroup and other containers' cgroups.
        assert!(!in_container("0::/kubepods/besteffort/pod0b4f\n", ID));
        let prefix = format!("0::/kubepods/pod0b4f/{}\n", &ID[..12]);
        assert!(
            !in_container(&prefix, ID),
            "a shortened id is not the container"
        );
        let longer = format!("0::/kubepods/pod0b4f/{ID}0\n");
        assert!(!in_container(&longer, ID));
        assert!(!in_container(&format!("0::/kubepods/pod0b4f/{ID}\n"), ""));
        assert!(!in_container("garbage without colons\n", ID));
        let in_controller_list = format!("4:{ID}:/\n");
        assert!(
            !in_container(&in_controller_list, ID),
            "only the path counts"
        );
    }

    #[test]
    fn the_init_process_is_the_member_whose_parent_is_not_a_member() {
        // shim 100 → init 200 → workers 201, 202; 300 is an exec'd process (parent: the shim).
        let members = BTreeMap::from([(201, 200), (202, 200), (200, 100), (300, 100)]);
        assert_eq!(init_process(&members), Some(200));
        assert_eq!(init_process(&BTreeMap::new()), None);
        assert_eq!(
            parent_of_stat("200 (web (x) y) S 100 200 200 0 -1 4194560"),
            Some(100)
        );
        assert_eq!(parent_of_stat("garbage"), None);
    }

    #[test]
    fn members_are_read_from_a_proc_tree() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: &str, cgroup: &str, stat: &str| {
            let dir = proc.path().join(pid);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            std::fs::write(dir.join("stat"), stat).unwrap();
        };
        let mine = format!("4:memory:/kubepods/pod1/{ID}\n0::/\n");
        process("10", &mine, "10 (web) S 9 10 10");
        process("11", &mine, "11 (web worker) S 10 10 10");
        process(
            "12",
            &format!("0::/kubepods/pod1/{OTHER}\n"),
            "12 (db) S 9 12 12",
        );
        process("self", &mine, "10 (web) S 9 10 10");
        std::fs::create_dir(proc.path().join("13")).unwrap(); // exited meanwhile: no files
        let found = members(proc.path(), ID);
        assert_eq!(found, BTreeMap::from([(10, 9), (11, 10)]));
        assert_eq!(init_process(&found), Some(10));
    }
}
