//! Which containers of a pod are monitored, read from its annotations (pure; shared by the agent,
//! which monitors, and the operator, which remediates).
//!
//! kube-fim's annotations: `fim.kubefim.io/monitor: "true"`, `<container>.fim.kubefim.io/paths:
//! "/etc/nginx,/usr/share/nginx/html"`, `fim.kubefim.io/remediation: none|restart|kill|rollback`.
//! integrity-sum's are accepted unchanged: `integrity-monitor.scnsoft.com/inject: "true"` and
//! `<name>.integrity-monitor.scnsoft.com/monitoring-paths` (`<name>` matched against container
//! names; it implies `restart`, what its sidecar does). Bad entries become [`Selection::problems`]
//! (the operator publishes them as an event on the pod); the rest of the pod is still monitored.

use std::collections::BTreeMap;

use crate::labels;

/// integrity-sum's opt-in annotation.
pub const INTEGRITY_SUM_INJECT: &str = "integrity-monitor.scnsoft.com/inject";
/// Suffix of integrity-sum's per-process paths annotation.
pub const INTEGRITY_SUM_PATHS_SUFFIX: &str = ".integrity-monitor.scnsoft.com/monitoring-paths";
/// At most this many paths per container (each one is walked every gracePeriod).
pub const MAX_PATHS: usize = 32;
/// Longest accepted path (PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// What to do when a monitored container is tampered with (`fim.kubefim.io/remediation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Remediation {
    /// Report only.
    #[default]
    None,
    /// The operator deletes the pod; its controller recreates it from the image.
    Restart,
    /// The agent SIGKILLs the container's processes; the kubelet restarts it in place.
    Kill,
    /// The operator rolls the owning Deployment back to its previous revision.
    Rollback,
}

impl Remediation {
    pub const fn as_str(self) -> &'static str {
        match self {
            Remediation::None => "none",
            Remediation::Restart => "restart",
            Remediation::Kill => "kill",
            Remediation::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<Remediation> {
        Some(match text {
            "none" => Remediation::None,
            "restart" => Remediation::Restart,
            "kill" => Remediation::Kill,
            "rollback" => Remediation::Rollback,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Remediation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One monitored container and its absolute, normalised paths (sorted, no duplicates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoredContainer {
    pub name: String,
    pub paths: Vec<String>,
}

/// What a pod's annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Containers with at least one valid path, in the pod's container order.
    pub containers: Vec<MonitoredContainer>,
    pub remediation: Remediation,
    /// Each bad annotation entry, named (what the pod event says).
    pub problems: Vec<String>,
}

/// Whether the pod opted in (either project's annotation).
pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(labels::MONITOR).map(String::as_str) == Some("true")
        || annotations.get(INTEGRITY_SUM_INJECT).map(String::as_str) == Some("true")
}

/// The selection of a pod with these annotations and containers; `None` when it did not opt in.
pub fn select(annotations: &BTreeMap<String, String>, containers: &[&str]) -> Option<Selection> {
    if !opted_in(annotations) {
        return None;
    }
    let integrity_sum = annotations.get(INTEGRITY_SUM_INJECT).map(String::as_str) == Some("true");
    let mut problems = Vec::new();
    let mut paths: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (key, value) in annotations {
        let name = if let Some(c) = labels::container_of_paths_annotation(key) {
            c
        } else if let Some(c) = key
            .strip_suffix(INTEGRITY_SUM_PATHS_SUFFIX)
            .filter(|c| !c.is_empty())
        {
            c
        } else {
            continue;
        };
        let Some(container) = containers.iter().find(|c| **c == name) else {
            problems.push(format!(
                "annotation {key} names container {name:?}, which the pod does not have \
                 (containers: {})",
                containers.join(", ")
            ));
            continue;
        };
        let list = paths.entry(container).or_default();
        for raw in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match normalise(raw) {
                Ok(p) => list.push(p),
                Err(why) => problems.push(format!("annotation {key}: path {raw:?} {why}")),
            }
        }
    }
    let mut selected = Vec::new();
    for name in containers {
        let Some(mut list) = paths.remove(name) else {
            continue;
        };
        list.sort();
        list.dedup();
        if list.len() > MAX_PATHS {
            problems.push(format!(
                "container {name}: {} paths, at most {MAX_PATHS} are monitored (the first \
                 {MAX_PATHS} in sorted order)",
                list.len()
            ));
            list.truncate(MAX_PATHS);
        }
        if !list.is_empty() {
            selected.push(MonitoredContainer {
                name: (*name).to_owned(),
                paths: list,
            });
        }
    }
    if selected.is_empty() && problems.is_empty() {
        problems.push(format!(
            "the pod asks for monitoring but names no paths: add <container>{} (e.g. \
             {}{}: \"/etc/nginx\")",
            labels::PATHS_SUFFIX,
            containers.first().copied().unwrap_or("app"),
            labels::PATHS_SUFFIX
        ));
    }
    let remediation = match annotations.get(labels::REMEDIATION) {
        Some(text) => Remediation::parse(text.trim()).unwrap_or_else(|| {
            problems.push(format!(
                "annotation {}: {text:?} is not one of none, restart, kill, rollback; \
                 nothing is remediated",
                labels::REMEDIATION
            ));
            Remediation::None
        }),
        // integrity-sum's sidecar deletes its pod on a mismatch.
        None if integrity_sum => Remediation::Restart,
        None => Remediation::None,
    };
    Some(Selection {
        containers: selected,
        remediation,
        problems,
    })
}

/// An absolute path with no `.`/`..` component, empty components dropped (`/a//b/` → `/a/b`).
fn normalise(path: &str) -> Result<String, &'static str> {
    if path.len() > MAX_PATH_LEN {
        return Err("is longer than 4096 bytes");
    }
    if !path.starts_with('/') {
        return Err("is relative: paths must be absolute, like /etc/nginx");
    }
    if path.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err("contains a control character");
    }
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return Err("contains a . or .. component");
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The workload a pod belongs to, for the remediation backoff: its controller owner
/// (`ReplicaSet/web-6d4f`), else the pod itself (`Pod/name`), in its namespace.
pub fn workload_of(
    namespace: &str,
    pod: &str,
    owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
) -> String {
    match owners.iter().find(|o| o.controller == Some(true)) {
        Some(o) => format!("{namespace}/{}/{}", o.kind, o.name),
        None => format!("{namespace}/Pod/{pod}"),
    }
}

/// Whether one more remediation is allowed, given the times (seconds) of earlier ones: at most
/// `max` within the last `window` seconds.
pub fn remediation_allowed(history: &[i64], now: i64, max: u32, window: i64) -> bool {
    let recent = history.iter().filter(|t| now - **t < window).count();
    recent < max as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn remediations_are_bounded_per_window_and_workloads_named_by_controller() {
        assert!(remediation_allowed(&[], 1000, 3, 600));
        assert!(remediation_allowed(&[500, 900], 1000, 3, 600));
        assert!(!remediation_allowed(&[500, 900, 950], 1000, 3, 600));
        assert!(
            remediation_allowed(&[300, 900, 950], 1000, 3, 600),
            "one fell out of the window"
        );
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let rs = OwnerReference {
            kind: "ReplicaSet".into(),
            name: "web-6d4f".into(),
            controller: Some(true),
            ..OwnerReference::default()
        };
        assert_eq!(
            workload_of("team", "web-6d4f-x", &[rs]),
            "team/ReplicaSet/web-6d4f"
        );
        assert_eq!(workload_of("team", "solo", &[]), "team/Pod/solo");
    }

    #[test]
    fn a_pod_without_the_opt_in_is_not_monitored() {
        let a = annotations(&[("web.fim.kubefim.io/paths", "/etc")]);
        assert_eq!(select(&a, &["web"]), None);
        let a = annotations(&[(labels::MONITOR, "yes")]);
        assert_eq!(select(&a, &["web"]), None, "only \"true\" opts in");
    }

    #[test]
    fn kube_fim_annotations_select_paths_per_container() {
        let a = annotations(&[
            (labels::MONITOR, "true"),
            (
                "web.fim.kubefim.io/paths",
                "/usr/share/nginx/html, /etc/nginx/,/etc//nginx",
            ),
            ("side.fim.kubefim.io/paths", "/app"),
            (labels::REMEDIATION, "rollback"),
        ]);
        let s = select(&a, &["web", "side", "other"]).unwrap();
        assert_eq!(
            s.containers,
            [
                MonitoredContainer {
                    name: "web".into(),
                    paths: vec!["/etc/nginx".into(), "/usr/share/nginx/html".into()],
                },
                MonitoredContainer {
                    name: "side".into(),
                    paths: vec!["/app".into()],
                },
            ]
        );
        assert_eq!(s.remediation, Remediation::Rollback);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    #[test]
    fn integrity_sum_annotations_work_unchanged_and_imply_restart() {
        let a = annotations(&[
            (INTEGRITY_SUM_INJECT, "true"),
            ("integrity-monitor.scnsoft.com/process-image", "nginx:nginx"),
            (
                "nginx.integrity-monitor.scnsoft.com/monitoring-paths",
                "/etc/nginx,/usr/share/nginx/html",
            ),
        ]);
        let s = select(&a, &["nginx"]).unwrap();
        assert_eq!(
            s.containers[0].paths,
            ["/etc/nginx", "/usr/share/nginx/html"]
        );
        assert_eq!(s.remediation, Remediation::Restart);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let mut none = a.clone();
        none.insert(labels::REMEDIATION.into(), "none".into());
        assert_eq!(
            select(&none, &["nginx"]).unwrap().remediation,
            Remediation::None
        );
    }

    #[test]
    fn bad_entries_are_named_and_the_rest_is_still_monitored() {
        let a = annotations(&[
            (labels::MONITOR, "true"),
            (
                "web.fim.kubefim.io/paths",
                "etc/nginx,/srv/../etc,/srv/./x,/srv/html",
            ),
            ("ghost.fim.kubefim.io/paths", "/etc"),
            (labels::REMEDIATION, "explode"),
        ]);
        let s = select(&a, &["web", "db"]).unwrap();
        assert_eq!(s.containers.len(), 1);
        assert_eq!(s.containers[0].paths, ["/srv/html"]);
        assert_eq!(s.remediation, Remediation::None);
        let text = s.problems.join("\n");
        assert_eq!(s.problems.len(), 5, "{text}");
        assert!(
            text.contains("ghost.fim.kubefim.io/paths names container \"ghost\", which the pod does not have (containers: web, db)"),
            "{text}"
        );
        assert!(text.contains("path \"etc/nginx\" is relative"), "{text}");
        assert!(
            text.contains("path \"/srv/../etc\" contains a . or .. component"),
            "{text}"
        );
        assert!(
            text.contains("path \"/srv/./x\" contains a . or .. component"),
            "{text}"
        );
        assert!(
            text.contains("\"explode\" is not one of none, restart, kill, rollback"),
            "{text}"
        );
    }

    #[test]
    fn an_opt_in_without_paths_is_a_problem_and_paths_are_bounded() {
        let a = annotations(&[(labels::MONITOR, "true")]);
        let s = select(&a, &["web"]).unwrap();
        assert!(s.containers.is_empty());
        assert!(s.problems[0].contains("names no paths"), "{:?}", s.problems);

        let many: Vec<String> = (0..40).map(|i| format!("/d{i:02}")).collect();
        let a = annotations(&[
            (labels::MONITOR, "true"),
            ("web.fim.kubefim.io/paths", &many.join(",")),
        ]);
        let s = select(&a, &["web"]).unwrap();
        assert_eq!(s.containers[0].paths.len(), MAX_PATHS);
        assert!(s.problems[0].contains("40 paths"), "{:?}", s.problems);
        assert_eq!(normalise("/"), Ok("/".into()));
        assert!(normalise(&format!("/{}", "a".repeat(5000))).is_err());
        assert!(normalise("/a\nb").is_err());
    }
}
