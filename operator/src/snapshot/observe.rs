//! Reads what the plan needs: the Snapshot's data (decoded inline, or the `spec.source` object),
//! the keys other Snapshots claim, whether storage is configured, and its credentials.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use kube_fim_crds::Snapshot;
use kube_fim_crds::labels::SNAPSHOT_FINALIZER;

use super::Context;
use super::plan::{Claim, Data, Observed, object_key};
use super::storage::{Bucket, Credentials};

fn created(s: &Snapshot) -> i64 {
    s.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

fn full_name(s: &Snapshot) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

/// The bucket, when an endpoint is configured; `Err` when its credentials cannot be read.
pub async fn bucket(ctx: &Context) -> Option<Result<Bucket, String>> {
    let endpoint = ctx.storage.endpoint.as_deref()?;
    let credentials = match &ctx.storage.credentials_secret {
        Some(name) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            match secrets.get(name).await {
                Ok(secret) => {
                    let data = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    Credentials::from_secret_data(&data).ok_or_else(|| {
                        format!(
                            "Secret {}/{name} lacks accessKey and secretKey",
                            ctx.namespace
                        )
                    })
                }
                Err(e) => Err(format!(
                    "cannot read Secret {}/{name}: {e}",
                    ctx.namespace
                )),
            }
        }
        None => match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(access_key), Ok(secret_key)) => Ok(Credentials {
                access_key,
                secret_key,
            }),
            _ => Err("no S3 credentials: set --s3-credentials-secret or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
        },
    };
    Some(credentials.map(|c| {
        Bucket::new(
            endpoint,
            &ctx.storage.region,
            &ctx.storage.bucket,
            &c,
            "fim-operator",
        )
    }))
}

pub async fn observe(
    snapshot: &Arc<Snapshot>,
    ctx: &Context,
    bucket: Option<&Result<Bucket, String>>,
) -> Observed {
    let namespace = snapshot.namespace().unwrap_or_default();
    let data = match &snapshot.spec.source {
        None => match snapshot.inline_data() {
            Some(bytes) => Data::Bytes(bytes),
            None => Data::BadBase64,
        },
        Some(source) => match bucket {
            None => Data::SourceUnreachable(
                "spec.source needs S3 storage, and none is configured".into(),
            ),
            Some(Err(e)) => Data::SourceUnreachable(e.clone()),
            Some(Ok(b)) if snapshot.metadata.deletion_timestamp.is_some() => {
                let _ = b;
                Data::Bytes(Vec::new())
            }
            Some(Ok(b)) => match b.get(&source.key).await {
                Ok(Some(bytes)) => Data::Bytes(bytes),
                Ok(None) => Data::SourceMissing,
                Err(e) => Data::SourceUnreachable(e.to_string()),
            },
        },
    };
    let uid = snapshot.uid();
    let others = ctx
        .snapshots
        .state()
        .iter()
        .filter(|s| s.uid() != uid && s.metadata.deletion_timestamp.is_none())
        // An invalid Snapshot claims no key: it will never be uploaded.
        .filter(|s| {
            !s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == super::plan::VALID && c.status == "False")
            })
        })
        .filter_map(|s| {
            let ns = s.namespace().unwrap_or_default();
            object_key(s, &ns).ok().map(|key| Claim {
                name: full_name(s),
                key,
                created: created(s),
            })
        })
        .collect();
    let failures = ctx
        .failures
        .lock()
        .ok()
        .and_then(|f| f.get(&uid.clone().unwrap_or_default()).copied())
        .unwrap_or(0);
    Observed {
        namespace,
        name: full_name(snapshot),
        created: created(snapshot),
        generation: snapshot.metadata.generation,
        deleting: snapshot.metadata.deletion_timestamp.is_some(),
        has_finalizer: snapshot
            .finalizers()
            .iter()
            .any(|f| f == SNAPSHOT_FINALIZER),
        status: snapshot.status.clone().unwrap_or_default(),
        data,
        others,
        storage: bucket.is_some(),
        failures,
    }
}
