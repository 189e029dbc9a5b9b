//! Leader election over the `fim-operator-leader` Lease in the operator's namespace
//! (`kube-lease-manager`): only the holder runs the controller; the other replicas wait as
//! standbys and write nothing (but the Lease itself).
//!
//! Besides the lease manager's own renew loop, the leader runs a [`fence`]: it reads the Lease
//! every `grace / 2` seconds and steps down when it cannot confirm it still holds an unexpired
//! lease a second before the time a standby may take over. The lease manager alone notices a
//! lost lease only when its next renewal succeeds (an API error is just retried), so a leader
//! cut off from the API server would otherwise keep writing after a standby took over.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseParams};

/// Name of the Lease, in the operator's namespace.
pub const LEASE_NAME: &str = "fim-operator-leader";

/// This replica's holder identity: `POD_NAME`, else `<hostname>-<pid>`.
pub fn identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return pod.trim().to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fim-operator".to_string());
    format!("{host}-{}", std::process::id())
}

/// Seconds before expiry at which the holder renews: a third of the lease, at least 1 s and
/// always less than the lease itself (`lease_seconds` must be at least 2).
pub fn grace_seconds(lease_seconds: u64) -> u64 {
    (lease_seconds / 3).clamp(1, lease_seconds.saturating_sub(1).max(1))
}

/// A manager of the Lease in `namespace` (created if missing).
pub async fn lease_manager(
    client: Client,
    namespace: &str,
    identity: &str,
    lease_seconds: u64,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .with_parameters(LeaseParams::new(
            identity,
            lease_seconds,
            grace_seconds(lease_seconds),
        ))
        .build()
        .await
}

/// Until when `lease` is held by `identity`: `renewTime + leaseDurationSeconds`, or `None`
/// when someone else (or nobody) holds it.
pub fn held_until(lease: &Lease, identity: &str) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    let seconds = u64::try_from(spec.lease_duration_seconds?).ok()?;
    renewed.checked_add(Duration::from_secs(seconds))
}

/// Why the leader stepped down.
#[derive(Debug)]
pub enum Lost {
    /// The Lease names another holder (or none).
    Taken,
    /// No confirmation of an unexpired lease before its deadline.
    Unconfirmed,
}

/// Returns when this replica can no longer be sure it leads: the Lease shows another holder,
/// or no successful read confirmed an unexpired lease of ours until one second before it
/// expires. `first_deadline` is the expiry assumed until the first read, which happens one
/// period after the start (by then the lease manager has renewed a lease it found still ours,
/// e.g. after a restart with the same `POD_NAME`). Each successful read replaces the expiry.
pub async fn fence(
    client: Client,
    namespace: &str,
    identity: &str,
    lease_seconds: u64,
    first_deadline: SystemTime,
) -> Lost {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let period =
        Duration::from_millis(grace_seconds(lease_seconds) * 500).max(Duration::from_millis(500));
    let margin = Duration::from_secs(1).min(Duration::from_secs(lease_seconds) / 4);
    let mut valid_until = first_deadline;
    loop {
        let deadline = valid_until
            .checked_sub(margin)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(period.min(left)).await;
        match tokio::time::timeout(period, leases.get_opt(LEASE_NAME)).await {
            Ok(Ok(Some(lease))) => match held_until(&lease, identity) {
                Some(until) => valid_until = until,
                None => return Lost::Taken,
            },
            Ok(Ok(None)) => return Lost::Taken,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the leader Lease"),
            Err(_) => tracing::warn!("reading the leader Lease timed out"),
        }
        if SystemTime::now() + margin >= valid_until {
            return Lost::Unconfirmed;
        }
    }
}

/// Whether a fresh read shows the Lease held by `identity` and unexpired. Checked before
/// releasing it on shutdown: the lease manager releases from its cached state, without a
/// precondition, so a replica that lost the Lease unnoticed would clear the new holder's.
pub async fn still_held(client: Client, namespace: &str, identity: &str) -> bool {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    match leases.get_opt(LEASE_NAME).await {
        Ok(Some(lease)) => held_until(&lease, identity).is_some_and(|t| t > SystemTime::now()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn grace_is_positive_and_shorter_than_the_lease() {
        assert_eq!(grace_seconds(2), 1);
        assert_eq!(grace_seconds(3), 1);
        assert_eq!(grace_seconds(15), 5);
        assert_eq!(grace_seconds(30), 10);
        for s in 2..100 {
            let g = grace_seconds(s);
            assert!(g >= 1 && g < s, "lease {s}, grace {g}");
        }
    }

    #[test]
    fn identity_prefers_pod_name() {
        // Only checks the fallback shape; POD_NAME is not set under `cargo test`.
        if std::env::var_os("POD_NAME").is_none() {
            assert!(identity().ends_with(&format!("-{}", std::process::id())));
        }
    }

    #[test]
    fn a_lease_is_held_until_renewal_plus_duration_by_its_holder_only() {
        let renewed = k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap();
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(
            held_until(&lease, "a"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_015))
        );
        assert_eq!(held_until(&lease, "b"), None);
        assert_eq!(held_until(&Lease::default(), "a"), None);
    }
}
