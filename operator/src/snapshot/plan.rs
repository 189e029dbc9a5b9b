//! What to do with one Snapshot, decided from what [`super::observe`] saw: pure, no I/O, no clock
//! (`now` comes in), so every rule is unit-tested.

use std::time::Duration;

use fim_engine::image::{ImageRef, lines::parse_lines};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_fim_crds::{Snapshot, SnapshotStatus};
use sha2::{Digest, Sha256};

pub const VALID: &str = "Valid";
pub const UPLOADED: &str = "Uploaded";

/// The data of a Snapshot as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// Decoded `spec.hashes`, or the `spec.source` object.
    Bytes(Vec<u8>),
    /// `spec.hashes` is not base64 (the schema lets little through, but not nothing).
    BadBase64,
    /// The `spec.source` object does not exist.
    SourceMissing,
    /// `spec.source` is set but no storage is configured.
    SourceUnreachable(String),
}

/// Another Snapshot that may claim the same object key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub name: String,
    /// The key it resolves to (from its spec).
    pub key: String,
    /// Creation time (seconds) and name order who came first.
    pub created: i64,
}

/// Everything [`plan`] needs.
#[derive(Clone, Debug)]
pub struct Observed {
    pub namespace: String,
    /// `namespace/name`.
    pub name: String,
    pub created: i64,
    pub generation: Option<i64>,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub status: SnapshotStatus,
    pub data: Data,
    /// The other Snapshots (not being deleted) and their keys.
    pub others: Vec<Claim>,
    /// S3 is configured (endpoint and bucket).
    pub storage: bool,
    /// Consecutive failed upload attempts so far (for the backoff).
    pub failures: u32,
}

/// Steps for [`super::apply`], in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    AddFinalizer,
    /// Create the bucket if missing, then write `data` at `key`.
    Upload {
        key: String,
        data: Vec<u8>,
    },
    /// Delete an object this Snapshot owned (finalizer, or its key changed).
    Delete {
        key: String,
    },
    RemoveFinalizer,
    Status(Box<SnapshotStatus>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// When to look again (conflicts, retries); `None`: on the next change.
    pub requeue: Option<Duration>,
}

/// Retry delays: 1 s, 2 s, 4 s … capped at `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(16)).min(max)
}

/// The key a Snapshot resolves to: `spec.source.key`, else the image's canonical key.
pub fn object_key(snapshot: &Snapshot, namespace: &str) -> Result<String, String> {
    if let Some(source) = &snapshot.spec.source {
        return Ok(source.key.clone());
    }
    let reference = ImageRef::parse(&snapshot.spec.image).map_err(|e| e.to_string())?;
    Ok(reference.object_key(
        namespace,
        snapshot.spec.algorithm.extension(),
        snapshot.spec.image_digest.as_deref(),
    ))
}

/// Sets (or replaces) a condition, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time: time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// The result of the content checks: the data and what it is.
pub struct Checked {
    pub data: Vec<u8>,
    pub control_hash: String,
    pub files: usize,
}

/// `Valid`: image reference, data present and well-formed (lines checked per algorithm), and the
/// source object unchanged since upload.
pub fn check(snapshot: &Snapshot, data: &Data) -> Result<Checked, (&'static str, String)> {
    ImageRef::parse(&snapshot.spec.image)
        .map_err(|e| ("InvalidImage", format!("spec.image: {e}")))?;
    let bytes = match data {
        Data::Bytes(b) => b,
        Data::BadBase64 => {
            return Err(("InvalidContent", "spec.hashes is not valid base64".into()));
        }
        Data::SourceMissing => {
            let key = snapshot
                .spec
                .source
                .as_ref()
                .map(|s| s.key.as_str())
                .unwrap_or("");
            return Err((
                "SourceMissing",
                format!("spec.source.key: object {key} does not exist"),
            ));
        }
        Data::SourceUnreachable(e) => return Err(("SourceUnreachable", e.clone())),
    };
    let control_hash = hex::encode(Sha256::digest(bytes));
    if let Some(source) = &snapshot.spec.source
        && !source.sha256.eq_ignore_ascii_case(&control_hash)
    {
        return Err((
            "SourceChanged",
            format!(
                "spec.source.sha256: object {} has SHA-256 {control_hash}, not {}",
                source.key, source.sha256
            ),
        ));
    }
    let hex_len = snapshot.spec.algorithm.output_len() * 2;
    let lines = parse_lines(bytes, hex_len).map_err(|e| {
        let field = if snapshot.spec.source.is_some() {
            "spec.source"
        } else {
            "spec.hashes"
        };
        ("InvalidContent", format!("{field}: {e}"))
    })?;
    Ok(Checked {
        files: lines.len(),
        control_hash,
        data: bytes.clone(),
    })
}

/// The plan for one Snapshot.
pub fn plan(snapshot: &Snapshot, o: &Observed, now: Time, max_backoff: Duration) -> Plan {
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: o.generation,
    };
    let owned_key = o
        .status
        .uploaded
        .then(|| o.status.object_key.clone())
        .flatten();

    if o.deleting {
        let mut steps = Vec::new();
        if o.has_finalizer {
            // The object goes first: a finalizer removed before would leak it.
            if let Some(key) = owned_key.filter(|_| o.storage) {
                steps.push(Step::Delete { key });
            }
            steps.push(Step::RemoveFinalizer);
        }
        return Plan {
            steps,
            requeue: None,
        };
    }

    let mut steps = Vec::new();
    if o.storage && !o.has_finalizer {
        steps.push(Step::AddFinalizer);
    }
    let mut status = SnapshotStatus {
        observed_generation: o.generation,
        conditions: o.status.conditions.clone(),
        ..Default::default()
    };
    let mut requeue = None;

    let checked = match check(snapshot, &o.data) {
        Ok(c) => c,
        Err((reason, message)) => {
            set_condition(
                &mut status.conditions,
                condition(VALID, false, reason, message),
            );
            set_condition(
                &mut status.conditions,
                condition(
                    UPLOADED,
                    false,
                    "Invalid",
                    "not uploaded: the snapshot is not valid".into(),
                ),
            );
            // Keep the object of the last valid version until the spec is fixed or deleted.
            status.object_key = owned_key.clone();
            status.uploaded = false;
            if reason == "SourceUnreachable" || reason == "SourceMissing" {
                requeue = Some(backoff(o.failures, max_backoff));
            }
            steps.push(Step::Status(Box::new(status)));
            return Plan { steps, requeue };
        }
    };
    set_condition(
        &mut status.conditions,
        condition(VALID, true, "Valid", format!("{} files", checked.files)),
    );
    status.control_hash = Some(checked.control_hash.clone());
    status.files = Some(checked.files as i64);

    let key = match object_key(snapshot, &o.namespace) {
        Ok(k) => k,
        Err(e) => {
            // check() parsed the image already; kept for completeness.
            set_condition(
                &mut status.conditions,
                condition(UPLOADED, false, "InvalidImage", e),
            );
            steps.push(Step::Status(Box::new(status)));
            return Plan { steps, requeue };
        }
    };
    // The earliest Snapshot (creation time, then name) claiming a key keeps it.
    let winner = o
        .others
        .iter()
        .filter(|c| c.key == key && (c.created, &c.name) < (o.created, &o.name))
        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    if let Some(first) = winner {
        set_condition(
            &mut status.conditions,
            condition(
                UPLOADED,
                false,
                "Conflict",
                format!(
                    "object key {key} belongs to Snapshot {}; nothing was written",
                    first.name
                ),
            ),
        );
        status.object_key = owned_key.filter(|k| *k != key);
        status.uploaded = false;
        steps.push(Step::Status(Box::new(status)));
        // The other one may go away.
        return Plan {
            steps,
            requeue: Some(max_backoff.max(Duration::from_secs(30))),
        };
    }
    if !o.storage {
        set_condition(
            &mut status.conditions,
            condition(
                UPLOADED,
                false,
                "StorageNotConfigured",
                "no S3 storage configured for the operator; the inline data serves".into(),
            ),
        );
        steps.push(Step::Status(Box::new(status)));
        return Plan {
            steps,
            requeue: None,
        };
    }
    let current = o.status.uploaded
        && o.status.object_key.as_deref() == Some(key.as_str())
        && o.status.control_hash.as_deref() == Some(checked.control_hash.as_str());
    status.object_key = Some(key.clone());
    status.uploaded = true;
    let uploaded_message = format!("uploaded to {key}");
    if !current && snapshot.spec.source.is_none() {
        steps.push(Step::Upload {
            key: key.clone(),
            data: checked.data,
        });
    }
    if let Some(old) = owned_key.filter(|old| *old != key) {
        steps.push(Step::Delete { key: old });
    }
    set_condition(
        &mut status.conditions,
        condition(UPLOADED, true, "Uploaded", uploaded_message),
    );
    steps.push(Step::Status(Box::new(status)));
    Plan { steps, requeue }
}

/// The status after a failed storage step: `Uploaded=False` with the error, not uploaded, and the
/// key it was for.
pub fn failed(
    mut status: SnapshotStatus,
    reason: &str,
    error: String,
    now: Time,
    generation: Option<i64>,
) -> SnapshotStatus {
    status.uploaded = false;
    set_condition(
        &mut status.conditions,
        Condition {
            type_: UPLOADED.into(),
            status: "False".into(),
            reason: reason.into(),
            message: error,
            last_transition_time: now,
            observed_generation: generation,
        },
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use k8s_openapi::jiff::Timestamp;
    use kube_fim_crds::{Algorithm, SnapshotSource, SnapshotSpec};

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn now() -> Time {
        Time(Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn data() -> Vec<u8> {
        format!("{HEX}  app/a\n{HEX}  app/b\n").into_bytes()
    }

    fn snapshot(image: &str) -> Snapshot {
        Snapshot::new(
            "snap",
            SnapshotSpec {
                image: image.into(),
                image_digest: None,
                algorithm: Algorithm::Sha256,
                hashes: Some(base64::engine::general_purpose::STANDARD.encode(data())),
                source: None,
            },
        )
    }

    fn observed() -> Observed {
        Observed {
            namespace: "team".into(),
            name: "team/snap".into(),
            created: 100,
            generation: Some(1),
            deleting: false,
            has_finalizer: true,
            status: SnapshotStatus::default(),
            data: Data::Bytes(data()),
            others: vec![],
            storage: true,
            failures: 0,
        }
    }

    fn status_of(p: &Plan) -> &SnapshotStatus {
        p.steps
            .iter()
            .find_map(|s| match s {
                Step::Status(s) => Some(&**s),
                _ => None,
            })
            .expect("a status step")
    }

    fn cond<'a>(s: &'a SnapshotStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn a_new_snapshot_is_uploaded_at_its_key_with_its_control_hash() {
        let s = snapshot("registry:5000/app:1");
        let p = plan(&s, &observed(), now(), MAX);
        let key = "team/registry:5000/app/1.sha256";
        assert_eq!(
            p.steps[0],
            Step::Upload {
                key: key.into(),
                data: data()
            }
        );
        let st = status_of(&p);
        assert!(st.uploaded);
        assert_eq!(st.object_key.as_deref(), Some(key));
        assert_eq!(
            st.control_hash.as_deref(),
            Some(hex::encode(Sha256::digest(data())).as_str())
        );
        assert_eq!(st.files, Some(2));
        assert_eq!(cond(st, VALID).status, "True");
        assert_eq!(cond(st, UPLOADED).reason, "Uploaded");
        assert_eq!(st.observed_generation, Some(1));
    }

    #[test]
    fn finalizer_first_then_steady_state_writes_nothing_but_status() {
        let s = snapshot("nginx");
        let mut o = observed();
        o.has_finalizer = false;
        assert_eq!(plan(&s, &o, now(), MAX).steps[0], Step::AddFinalizer);
        let first = plan(&s, &observed(), now(), MAX);
        let mut o = observed();
        o.status = status_of(&first).clone();
        let again = plan(&s, &o, now(), MAX);
        assert_eq!(again.steps.len(), 1, "{:?}", again.steps);
        assert_eq!(status_of(&again), status_of(&first));
    }

    #[test]
    fn a_spec_change_uploads_the_new_key_and_deletes_the_old_object() {
        let mut o = observed();
        o.status = status_of(&plan(&snapshot("app:1"), &o, now(), MAX)).clone();
        let p = plan(&snapshot("app:2"), &o, now(), MAX);
        assert_eq!(
            p.steps[..2],
            [
                Step::Upload {
                    key: "team/docker.io/library/app/2.sha256".into(),
                    data: data()
                },
                Step::Delete {
                    key: "team/docker.io/library/app/1.sha256".into()
                },
            ]
        );
        // Same key, new content (hashes changed): uploaded again, nothing deleted.
        let mut changed = snapshot("app:1");
        let other = format!("{HEX}  app/c\n");
        changed.spec.hashes = Some(base64::engine::general_purpose::STANDARD.encode(&other));
        let mut o2 = o.clone();
        o2.data = Data::Bytes(other.clone().into_bytes());
        let p = plan(&changed, &o2, now(), MAX);
        assert_eq!(
            p.steps[0],
            Step::Upload {
                key: "team/docker.io/library/app/1.sha256".into(),
                data: other.into_bytes()
            }
        );
        assert_eq!(p.steps.len(), 2);
    }

    #[test]
    fn deletion_removes_the_owned_object_then_the_finalizer() {
        let mut o = observed();
        o.status = status_of(&plan(&snapshot("app:1"), &o, now(), MAX)).clone();
        o.deleting = true;
        let p = plan(&snapshot("app:1"), &o, now(), MAX);
        assert_eq!(
            p.steps,
            [
                Step::Delete {
                    key: "team/docker.io/library/app/1.sha256".into()
                },
                Step::RemoveFinalizer
            ]
        );
        // Never uploaded (conflict, invalid): nothing to delete, the finalizer goes.
        let mut o = observed();
        o.deleting = true;
        assert_eq!(
            plan(&snapshot("app:1"), &o, now(), MAX).steps,
            [Step::RemoveFinalizer]
        );
    }

    #[test]
    fn the_later_of_two_snapshots_with_one_key_gets_a_conflict() {
        let mut o = observed();
        o.others = vec![Claim {
            name: "team/first".into(),
            key: "team/docker.io/library/app/1.sha256".into(),
            created: 50,
        }];
        let p = plan(&snapshot("docker.io/library/app:1"), &o, now(), MAX);
        assert!(
            p.steps
                .iter()
                .all(|s| !matches!(s, Step::Upload { .. } | Step::Delete { .. }))
        );
        let st = status_of(&p);
        assert!(!st.uploaded);
        let c = cond(st, UPLOADED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(c.message.contains("team/first"), "{}", c.message);
        assert!(p.requeue.is_some());
        // The earlier one is not bothered by the later.
        o.others[0].created = 200;
        assert!(matches!(
            plan(&snapshot("app:1"), &o, now(), MAX).steps[0],
            Step::Upload { .. }
        ));
    }

    #[test]
    fn invalid_content_names_the_line_and_is_not_vouched_for() {
        let mut s = snapshot("app:1");
        let bad = format!("{HEX}  app/a\n{HEX}  /etc/passwd\n");
        s.spec.hashes = Some(base64::engine::general_purpose::STANDARD.encode(&bad));
        let mut o = observed();
        o.data = Data::Bytes(bad.into_bytes());
        let p = plan(&s, &o, now(), MAX);
        let st = status_of(&p);
        let c = cond(st, VALID);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidContent")
        );
        assert!(c.message.contains("line 2"), "{}", c.message);
        assert_eq!(st.control_hash, None);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Upload { .. })));
        // Digest length follows the algorithm.
        s.spec.algorithm = Algorithm::Md5;
        o.data = Data::Bytes(data());
        let c = cond(status_of(&plan(&s, &o, now(), MAX)), VALID).clone();
        assert!(
            c.message.contains("line 1") && c.message.contains("32 hex"),
            "{}",
            c.message
        );
        // The image reference is checked fully (the CEL pattern misses a corner).
        let c = cond(
            status_of(&plan(
                &snapshot("bad_host.example/app"),
                &observed(),
                now(),
                MAX,
            )),
            VALID,
        )
        .clone();
        assert_eq!(c.reason, "InvalidImage");
    }

    #[test]
    fn without_storage_the_inline_data_still_serves() {
        let mut o = observed();
        o.storage = false;
        o.has_finalizer = false;
        let p = plan(&snapshot("app:1"), &o, now(), MAX);
        assert_eq!(p.steps.len(), 1);
        let st = status_of(&p);
        assert!(st.control_hash.is_some());
        assert_eq!(cond(st, UPLOADED).reason, "StorageNotConfigured");
        assert_eq!(cond(st, VALID).status, "True");
    }

    #[test]
    fn sources_are_checked_against_their_upload_digest_and_not_rewritten() {
        let mut s = snapshot("app:1");
        s.spec.hashes = None;
        s.spec.source = Some(SnapshotSource {
            key: "team/docker.io/library/app/1.sha256".into(),
            sha256: hex::encode(Sha256::digest(data())),
        });
        let p = plan(&s, &observed(), now(), MAX);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Upload { .. })));
        assert!(status_of(&p).uploaded);
        let mut o = observed();
        o.data = Data::Bytes(b"replaced".to_vec());
        let c = cond(status_of(&plan(&s, &o, now(), MAX)), VALID).clone();
        assert_eq!(c.reason, "SourceChanged");
        o.data = Data::SourceMissing;
        let p = plan(&s, &o, now(), MAX);
        assert_eq!(cond(status_of(&p), VALID).reason, "SourceMissing");
        assert!(p.requeue.is_some());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_transition_times_stick() {
        let d: Vec<u64> = (0..7).map(|n| backoff(n, MAX).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(100, MAX), MAX);
        let mut conditions = vec![];
        let t0 = now();
        let t1 = Time(Timestamp::from_second(1_700_000_100).unwrap());
        let c = |status: &str, t: &Time| Condition {
            type_: UPLOADED.into(),
            status: status.into(),
            reason: "r".into(),
            message: "m".into(),
            last_transition_time: t.clone(),
            observed_generation: None,
        };
        set_condition(&mut conditions, c("False", &t0));
        set_condition(&mut conditions, c("False", &t1));
        assert_eq!(conditions[0].last_transition_time, t0);
        set_condition(&mut conditions, c("True", &t1));
        assert_eq!(
            (conditions.len(), &conditions[0].last_transition_time),
            (1, &t1)
        );
    }
}
