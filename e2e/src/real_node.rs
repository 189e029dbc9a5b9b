//! The cluster's real node (`real-node-0`, e2e/scripts/real-node-up.sh): where it is, the host
//! processes of its containers, and the test images (hack/build-test-images.sh) compared with the
//! release Dockerfiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::fixtures::WAIT;
use crate::{E2eError, Poll, Result, cluster_env, state_dir, wait_for};

/// What cluster-up wrote about the real node.
#[derive(Clone, Debug)]
pub struct RealNode {
    /// The node name (`real-node-0`).
    pub name: String,
    /// Its containerd's socket; the runtime state is next to it.
    pub containerd_socket: PathBuf,
}

impl RealNode {
    /// The real node of the running cluster; an error saying how to get one when there is none.
    pub fn from_env() -> Result<RealNode> {
        let env = cluster_env()?;
        match (env.get("REAL_NODE"), env.get("REAL_NODE_CONTAINERD")) {
            (Some(name), Some(socket)) => Ok(RealNode {
                name: name.clone(),
                containerd_socket: PathBuf::from(socket),
            }),
            _ => Err(E2eError::NoCluster(format!(
                "no real node in {} (cluster-up skips it without root, with REAL_NODE=0, or when \
                 another cluster on this machine has it: see the cluster-up log)",
                state_dir().join("env").display()
            ))),
        }
    }

    /// Removes what an earlier test on the real node left (a failed test keeps its namespace;
    /// tests on the node use namespaces `real-*`), then waits until no pod at all is left on the
    /// node: a leftover host-network agent would hold its metrics port, and a pod of any other
    /// namespace there is a leak from another suite (their pods belong on kwok nodes), named in
    /// the failure.
    pub async fn wait_idle(&self, client: &Client) {
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", self.name));
        let pods: Api<Pod> = Api::all(client.clone());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for p in pods.list(&on_node).await.unwrap() {
            let ns = p.namespace().unwrap_or_default();
            if ns.starts_with("real-") {
                let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
                // A pod the kubelet rejected (or a DaemonSet pod being replaced) can linger.
                let _ = Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
        wait_for("no pod left on the real node", WAIT * 2, || async {
            let left: Vec<String> = pods
                .list(&on_node)
                .await?
                .items
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            Ok(if left.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{left:?}"))
            })
        })
        .await
        .unwrap();
    }

    /// Host pid of the container's main process (`containerd://<id>` in the pod status), from
    /// containerd's runtime state.
    pub fn container_pid(&self, pod: &Pod, container: &str) -> Result<u32> {
        let id = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container))
            .and_then(|c| c.container_id.as_deref())
            .and_then(|id| id.strip_prefix("containerd://"))
            .ok_or_else(|| E2eError::Other(format!("no containerd id for {container}")))?;
        let state = self
            .containerd_socket
            .parent()
            .unwrap_or(Path::new("/"))
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("init.pid");
        let text = std::fs::read_to_string(&state)?;
        text.trim()
            .parse()
            .map_err(|e| E2eError::Other(format!("{}: {e}", state.display())))
    }
}

/// `/proc/<pid>/status` fields (`CapEff`, `NoNewPrivs`, `Seccomp`, `Uid`, ...).
pub fn proc_status(pid: u32) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_proc_status(&text))
}

pub fn parse_proc_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Linux capability numbers of the names kube-fim uses.
pub fn capability_bit(name: &str) -> Option<u32> {
    Some(match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "DAC_READ_SEARCH" => 2,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_CHROOT" => 18,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "MKNOD" => 27,
        "AUDIT_WRITE" => 29,
        "SETFCAP" => 31,
        _ => return None,
    })
}

/// Capability names of a `CapEff`-style hex mask (unknown bits as `bit<N>`), sorted.
pub fn capability_names(hex_mask: &str) -> Vec<String> {
    let mask = u64::from_str_radix(hex_mask, 16).unwrap_or(0);
    let known = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "KILL",
        "SETGID",
        "SETUID",
        "NET_BIND_SERVICE",
        "NET_ADMIN",
        "NET_RAW",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_ADMIN",
        "MKNOD",
        "AUDIT_WRITE",
        "SETFCAP",
    ];
    let mut names: Vec<String> = (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| {
            known
                .iter()
                .find(|n| capability_bit(n) == Some(bit))
                .map(|n| (*n).to_owned())
                .unwrap_or_else(|| format!("bit{bit}"))
        })
        .collect();
    names.sort();
    names
}

/// Entrypoint and user of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRuntime {
    pub entrypoint: Vec<String>,
    pub user: String,
}

/// ENTRYPOINT (exec form) and USER of a Dockerfile's final stage.
pub fn dockerfile_runtime(text: &str) -> Result<ImageRuntime> {
    let mut entrypoint = None;
    let mut user = String::new();
    // Continuation lines joined, comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            // A new stage starts afresh (only the last one is the image).
            "FROM" => {
                entrypoint = None;
                user.clear();
            }
            "USER" => user = rest.trim().to_owned(),
            "ENTRYPOINT" => {
                entrypoint = Some(serde_json::from_str::<Vec<String>>(rest.trim()).map_err(
                    |e| E2eError::Other(format!("ENTRYPOINT is not in exec form: {rest}: {e}")),
                )?)
            }
            _ => {}
        }
    }
    Ok(ImageRuntime {
        entrypoint: entrypoint.ok_or_else(|| E2eError::Other("no ENTRYPOINT".into()))?,
        user,
    })
}

/// Entries of an uncompressed tar archive (regular files only), by name.
pub fn tar_files(data: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let bad = |why: &str| E2eError::Other(format!("bad tar archive: {why}"));
    let mut files = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= data.len() {
        let header = &data[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |from: usize, len: usize| {
            let raw = &header[from..from + len];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(len);
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size = usize::from_str_radix(field(124, 12).trim(), 8).map_err(|_| bad("size"))?;
        let mut name = field(0, 100);
        let prefix = field(345, 155);
        if field(257, 5) == "ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let kind = header[156];
        let body = at + 512;
        if body + size > data.len() {
            return Err(bad("truncated"));
        }
        if kind == b'0' || kind == 0 {
            files.insert(
                name.trim_start_matches("./").to_owned(),
                data[body..body + size].to_vec(),
            );
        }
        at = body + size.div_ceil(512) * 512;
    }
    Ok(files)
}

/// Entrypoint and user of the single image in an OCI archive (`buildah push oci-archive:`).
pub fn oci_archive_runtime(path: &Path) -> Result<ImageRuntime> {
    let files = tar_files(&std::fs::read(path)?)?;
    let json = |name: &str| -> Result<serde_json::Value> {
        let data = files
            .get(name)
            .ok_or_else(|| E2eError::Other(format!("{}: no {name}", path.display())))?;
        serde_json::from_slice(data).map_err(|e| E2eError::Other(format!("{name}: {e}")))
    };
    let blob = |digest: &serde_json::Value| {
        format!(
            "blobs/{}",
            digest.as_str().unwrap_or_default().replacen(':', "/", 1)
        )
    };
    let index = json("index.json")?;
    let manifest = json(&blob(&index["manifests"][0]["digest"]))?;
    let config = json(&blob(&manifest["config"]["digest"]))?;
    let c = &config["config"];
    Ok(ImageRuntime {
        entrypoint: serde_json::from_value(c["Entrypoint"].clone()).unwrap_or_default(),
        user: c["User"].as_str().unwrap_or_default().to_owned(),
    })
}

/// The OCI archive of a test image (`$KUBE_FIM_CACHE/images/<name>.tar`).
pub fn test_image_archive(name: &str) -> PathBuf {
    let cache = std::env::var_os("KUBE_FIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kube-fim")
        });
    cache.join("images").join(format!("{name}.tar"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stage_of_a_dockerfile_decides() {
        let text = "FROM rust AS build\nUSER 1000\nENTRYPOINT [\"/bin/false\"]\n\
                    # a comment\nFROM scratch\nCOPY x /x\nUSER 65532:65532\n\
                    ENTRYPOINT [\"/usr/local/bin/fim-operator\", \\\n  \"--flag\"]\n";
        assert_eq!(
            dockerfile_runtime(text).unwrap(),
            ImageRuntime {
                entrypoint: vec!["/usr/local/bin/fim-operator".into(), "--flag".into()],
                user: "65532:65532".into(),
            }
        );
        assert!(dockerfile_runtime("FROM a\nENTRYPOINT /bin/sh -c x\n").is_err());
        assert!(dockerfile_runtime("FROM a\nENTRYPOINT [\"/x\"]\nFROM b\n").is_err());
    }

    #[test]
    fn capability_masks_name_their_bits() {
        assert_eq!(capability_names("0000000000000004"), ["DAC_READ_SEARCH"]);
        assert_eq!(
            capability_names("0000000000200004"),
            ["DAC_READ_SEARCH", "SYS_ADMIN"]
        );
        assert_eq!(capability_names("0000000000000000"), Vec::<String>::new());
        assert_eq!(capability_names("8000000000000000"), ["bit63"]);
    }

    #[test]
    fn proc_status_lines_split_at_the_colon() {
        let s = parse_proc_status("Name:\tfim-agent\nCapEff:\t0000000000000004\nSeccomp:\t2\n");
        assert_eq!(s["CapEff"], "0000000000000004");
        assert_eq!(s["Seccomp"], "2");
    }

    fn tar_entry(name: &str, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = b'0';
        h[257..262].copy_from_slice(b"ustar");
        let mut out = h;
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn a_tar_archive_yields_its_files() {
        let mut data = tar_entry("index.json", b"{}");
        data.extend(tar_entry("blobs/sha256/ab", &[7u8; 600]));
        data.extend(vec![0u8; 1024]);
        let files = tar_files(&data).unwrap();
        assert_eq!(files["index.json"], b"{}");
        assert_eq!(files["blobs/sha256/ab"].len(), 600);
        // Cut inside the second entry's body (its header ends at 1536, the body needs 600 bytes).
        data.truncate(1536 + 100);
        assert!(tar_files(&data).is_err(), "truncated body");
    }
}
