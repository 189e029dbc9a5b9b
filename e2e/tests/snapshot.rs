//! The Snapshot controller (fim-operator) and the agent's snapshot CLI and trusted loader against
//! the local control plane and real MinIO. Build first: `cargo build -p kube-fim-operator -p
//! kube-fim-agent` (`make e2e` does).
//!
//! Each test runs its own operator on its own namespace and bucket (created by the operator),
//! with the credentials in a Secret; the outage test runs its own MinIO so the others keep theirs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use fim_agent::snapshot_store::{LoadError, Store, load, sha256_hex};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::Snapshot;
use kube_fim_crds::labels::SNAPSHOT_FINALIZER;
use kube_fim_e2e::fixtures::{Operator, agent_binary, operator_binary};
use kube_fim_e2e::{
    Poll, TestNamespace, client, cluster_env, free_port, kubeconfig_path, state_dir, unique_suffix,
    wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "fim-snapshot-s3";

fn env(key: &str) -> String {
    cluster_env().unwrap()[key].clone()
}

/// A line of a sha256 snapshot.
fn line(i: usize) -> String {
    format!(
        "{}  app/file-{i:07}\n",
        sha256_hex(i.to_string().as_bytes())
    )
}

fn lines(n: usize) -> Vec<u8> {
    (0..n).map(line).collect::<String>().into_bytes()
}

fn inline(name: &str, image: &str, data: &[u8]) -> Value {
    json!({
        "apiVersion": "fim.kubefim.io/v1alpha1",
        "kind": "Snapshot",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "algorithm": "SHA256",
            "hashes": base64::engine::general_purpose::STANDARD.encode(data),
        }
    })
}

/// The operator on `ns`, with S3 at `endpoint` (if any) and `bucket`, credentials from the
/// Secret; the S3 variables of this process's environment are removed so only flags count.
fn operator(ns: &str, s3: Option<(&str, &str)>) -> Operator {
    let metrics_port = free_port().unwrap();
    let logs = state_dir().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log_path = logs.join(format!("operator-{ns}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(operator_binary());
    command
        .args(["--namespace", ns, "--agent-image", "kube-fim/agent:e2e"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--snapshot-retry-max-seconds", "4"])
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "info,fim_operator=debug")
        .env_remove("S3_ENDPOINT")
        .env_remove("S3_BUCKET")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some((endpoint, bucket)) = s3 {
        command.args([
            "--s3-endpoint",
            endpoint,
            "--s3-bucket",
            bucket,
            "--s3-credentials-secret",
            SECRET,
        ]);
    }
    Operator {
        identity: "operator".into(),
        child: command.spawn().unwrap(),
        metrics_port,
        log_path,
    }
}

/// The namespace, its credentials Secret, and a bucket name nobody created yet.
async fn setup(client: &Client, prefix: &str) -> (TestNamespace, String) {
    kube_fim_e2e::apply_crds(client).await.unwrap();
    let ns = TestNamespace::create(client, prefix).await.unwrap();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "accessKey".to_string(),
                ByteString(env("AWS_ACCESS_KEY_ID").into_bytes()),
            ),
            (
                "secretKey".to_string(),
                ByteString(env("AWS_SECRET_ACCESS_KEY").into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    (ns, format!("snap-{}", unique_suffix()))
}

fn store(endpoint: &str, bucket: &str) -> Store {
    kube_fim_e2e::install_crypto_provider();
    let credentials = fim_s3::Credentials {
        access_key: env("AWS_ACCESS_KEY_ID"),
        secret_key: env("AWS_SECRET_ACCESS_KEY"),
    };
    Store::new(endpoint, "us-east-1", bucket, &credentials, "e2e")
}

fn condition<'a>(s: &'a Snapshot, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// Waits until `accept` holds for the Snapshot.
async fn wait_snapshot(
    api: &Api<Snapshot>,
    name: &str,
    what: &str,
    accept: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    wait_for(what, WAIT, || {
        let api = api.clone();
        let name = name.to_string();
        let accept = &accept;
        async move {
            let s = api.get(&name).await?;
            Ok(if accept(&s) {
                Poll::Ready(s)
            } else {
                Poll::Pending(format!("{:?}", s.status))
            })
        }
    })
    .await
    .unwrap()
}

fn uploaded(s: &Snapshot) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.uploaded && st.observed_generation == s.metadata.generation)
}

async fn create(api: &Api<Snapshot>, object: Value) {
    let s: Snapshot = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

#[tokio::test]
async fn upload_respec_conflict_and_delete_with_the_finalizer() {
    let client = client().await.unwrap();
    let (ns, bucket) = setup(&client, "snap-life").await;
    let endpoint = env("S3_ENDPOINT");
    let _op = operator(&ns.name, Some((&endpoint, &bucket)));
    let api: Api<Snapshot> = Api::namespaced(client.clone(), &ns.name);
    let s3 = store(&endpoint, &bucket);

    let data = lines(3);
    create(&api, inline("app", "registry:5000/team/app:1", &data)).await;
    let s = wait_snapshot(&api, "app", "app uploaded", uploaded).await;
    let key = format!("{}/registry:5000/team/app/1.sha256", ns.name);
    let st = s.status.clone().unwrap();
    assert_eq!(st.object_key.as_deref(), Some(key.as_str()));
    assert_eq!(st.control_hash.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(st.files, Some(3));
    assert_eq!(condition(&s, "Valid").unwrap().0, "True");
    assert!(
        s.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&SNAPSHOT_FINALIZER.to_string())
    );
    // The bucket was created; the object holds exactly the decoded bytes.
    assert_eq!(s3.get(&key).await.unwrap(), Some(data.clone()));
    assert_eq!(load(&s, Some(&s3)).await.unwrap(), data);

    // Spec change: new tag → new key, the old object goes.
    let data2 = lines(4);
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "registry:5000/team/app:2", "hashes": base64::engine::general_purpose::STANDARD.encode(&data2)}})),
    )
    .await
    .unwrap();
    let s = wait_snapshot(&api, "app", "app re-uploaded", |s| {
        uploaded(s) && s.status.as_ref().unwrap().files == Some(4)
    })
    .await;
    let key2 = format!("{}/registry:5000/team/app/2.sha256", ns.name);
    assert_eq!(s.status.unwrap().object_key.as_deref(), Some(key2.as_str()));
    assert_eq!(s3.get(&key2).await.unwrap(), Some(data2.clone()));
    assert_eq!(s3.get(&key).await.unwrap(), None);

    // Another spelling of the same image and tag: Conflict, nothing overwritten.
    create(&api, inline("same", "registry:5000/team/app:2", &lines(1))).await;
    let later = wait_snapshot(&api, "same", "conflict", |s| {
        condition(s, "Uploaded").is_some_and(|c| c.1 == "Conflict")
    })
    .await;
    assert!(
        condition(&later, "Uploaded")
            .unwrap()
            .2
            .contains(&format!("{}/app", ns.name))
    );
    assert_eq!(s3.get(&key2).await.unwrap(), Some(data2));

    // Delete: the object goes, then the finalizer, then the Snapshot.
    api.delete("app", &DeleteParams::default()).await.unwrap();
    wait_for("app gone", WAIT, || {
        let api = api.clone();
        async move {
            Ok(match api.get_opt("app").await? {
                None => Poll::Ready(()),
                Some(s) => Poll::Pending(format!("{:?}", s.metadata.finalizers)),
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(s3.get(&key2).await.unwrap(), None);
    // The later one takes the key over once the first is gone (periodic recheck).
    wait_snapshot(&api, "same", "same uploaded after the conflict", uploaded).await;
    assert_eq!(s3.get(&key2).await.unwrap(), Some(lines(1)));
    api.delete("same", &DeleteParams::default()).await.unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn every_image_reference_form_gets_its_key() {
    let client = client().await.unwrap();
    let (ns, bucket) = setup(&client, "snap-refs").await;
    let endpoint = env("S3_ENDPOINT");
    let _op = operator(&ns.name, Some((&endpoint, &bucket)));
    let api: Api<Snapshot> = Api::namespaced(client.clone(), &ns.name);
    let s3 = store(&endpoint, &bucket);
    let d = format!("sha256:{}", "ab".repeat(32));
    let n = &ns.name;
    let cases = [
        (
            "port",
            "registry:5000/app:1".to_string(),
            format!("{n}/registry:5000/app/1.sha256"),
        ),
        (
            "nested",
            "ghcr.io/a/b/c:tag".into(),
            format!("{n}/ghcr.io/a/b/c/tag.sha256"),
        ),
        (
            "short",
            "nginx".into(),
            format!("{n}/docker.io/library/nginx/latest.sha256"),
        ),
        (
            "digest",
            format!("app@{d}"),
            format!("{n}/docker.io/library/app/{d}.sha256"),
        ),
        (
            "both",
            format!("host.example:8443/app:tag@{d}"),
            format!("{n}/host.example:8443/app/{d}.sha256"),
        ),
    ];
    for (i, (name, image, _)) in cases.iter().enumerate() {
        create(&api, inline(name, image, &lines(i + 1))).await;
    }
    for (i, (name, _, key)) in cases.iter().enumerate() {
        let s = wait_snapshot(&api, name, name, uploaded).await;
        assert_eq!(
            s.status.unwrap().object_key.as_deref(),
            Some(key.as_str()),
            "{name}"
        );
        assert_eq!(s3.get(key).await.unwrap(), Some(lines(i + 1)), "{name}");
    }
    for (name, _, _) in &cases {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn bad_snapshots_are_refused_at_admission_or_marked_invalid() {
    let client = client().await.unwrap();
    let (ns, _) = setup(&client, "snap-bad").await;
    // No storage: inline data still validated and vouched for.
    let op = operator(&ns.name, None);
    let api: Api<Snapshot> = Api::namespaced(client.clone(), &ns.name);
    // Untyped, so values the Rust type cannot hold (a lower-case algorithm) reach the server.
    let resource = kube::api::ApiResource::erase::<Snapshot>(&());
    let dynamic: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &resource);
    let try_create = |object: Value| {
        let api = dynamic.clone();
        async move {
            let s: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
            api.create(&PostParams::default(), &s)
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    let good = lines(2);
    for (change, field) in [
        (json!({"spec": {"image": "App:1"}}), "spec.image"),
        (json!({"spec": {"image": "app@sha256:abc"}}), "spec.image"),
        (json!({"spec": {"algorithm": "sha256"}}), "spec.algorithm"),
        (json!({"spec": {"hashes": "not base64!"}}), "spec.hashes"),
        (
            json!({"spec": {"imageDigest": "sha256:x"}}),
            "spec.imageDigest",
        ),
        (
            json!({"spec": {"source": {"key": "k", "sha256": "0".repeat(64)}}}),
            "spec.hashes or spec.source",
        ),
    ] {
        let mut object = inline("bad", "app:1", &good);
        merge(&mut object, change.clone());
        let err = try_create(object)
            .await
            .unwrap_or_else(|| panic!("{change} was admitted"));
        assert!(err.contains(field), "{change}: {err}");
    }
    // Content the schema cannot see: Valid=False naming the line.
    let bad = format!("{}{}", line(0), "zz  /etc/passwd\n");
    create(&api, inline("content", "app:1", bad.as_bytes())).await;
    let s = wait_snapshot(&api, "content", "Valid=False", |s| {
        condition(s, "Valid").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = condition(&s, "Valid").unwrap();
    assert_eq!(reason, "InvalidContent");
    assert!(message.contains("line 2"), "{message}");
    assert_eq!(s.status.as_ref().unwrap().control_hash, None);
    let err = load(&s, None).await.unwrap_err();
    assert!(matches!(err, LoadError::Unverified { .. }), "{err}");

    create(&api, inline("ok", "app:1", &good)).await;
    let s = wait_snapshot(&api, "ok", "StorageNotConfigured", |s| {
        condition(s, "Uploaded").is_some_and(|c| c.1 == "StorageNotConfigured")
    })
    .await;
    assert!(!s.status.as_ref().unwrap().uploaded);
    assert_eq!(load(&s, None).await.unwrap(), good);
    drop(op);
    ns.delete().await.unwrap();
}

fn merge(target: &mut Value, change: Value) {
    match (target, change) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, c) => *t = c,
    }
}

/// The MinIO binary cluster-up uses.
fn minio_binary() -> PathBuf {
    let bin = dirs_home().join(".cache/kube-fim/bin");
    std::fs::read_dir(&bin)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("minio-")
        })
        .map(|p| p.join("minio"))
        .expect("minio built by make cluster-components")
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap())
}

fn start_minio(port: u16, data: &std::path::Path) -> Child {
    Command::new(minio_binary())
        .args([
            "server",
            "--quiet",
            "--address",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--console-address",
            &format!("127.0.0.1:{}", free_port().unwrap()),
        ])
        .arg(data)
        .env("MINIO_ROOT_USER", env("AWS_ACCESS_KEY_ID"))
        .env("MINIO_ROOT_PASSWORD", env("AWS_SECRET_ACCESS_KEY"))
        .env("MINIO_UPDATE", "off")
        .env("MINIO_CALLHOME_ENABLE", "off")
        .env("MINIO_BROWSER", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn uploads_are_retried_until_minio_is_back() {
    let client = client().await.unwrap();
    let (ns, bucket) = setup(&client, "snap-outage").await;
    let port = free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    // MinIO is down when the operator starts.
    let op = operator(&ns.name, Some((&endpoint, &bucket)));
    let api: Api<Snapshot> = Api::namespaced(client.clone(), &ns.name);
    let data = lines(5);
    create(&api, inline("app", "app:1", &data)).await;
    let s = wait_snapshot(&api, "app", "Uploaded=False", |s| {
        condition(s, "Uploaded").is_some_and(|c| c.1 == "StorageUnavailable")
    })
    .await;
    assert!(!s.status.as_ref().unwrap().uploaded);
    assert!(!condition(&s, "Uploaded").unwrap().2.is_empty());
    // Retried: the error count grows.
    wait_for("two failed attempts", WAIT, || {
        let op = &op;
        async move {
            let (_, body) = op.get("/metrics").await?;
            let errors = body
                .lines()
                .find(|l| l.starts_with("fim_snapshot_storage_attempts_total{result=\"error\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            Ok(if errors >= 2 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{errors} errors"))
            })
        }
    })
    .await
    .unwrap();
    // MinIO starts: uploaded with no manual step (and the bucket created).
    let data_dir = tempfile::tempdir().unwrap();
    let mut minio = start_minio(port, data_dir.path());
    let s = wait_snapshot(&api, "app", "uploaded after MinIO started", uploaded).await;
    let s3 = store(&endpoint, &bucket);
    let key = s.status.as_ref().unwrap().object_key.clone().unwrap();
    assert_eq!(s3.get(&key).await.unwrap(), Some(data));
    let (_, body) = op.get("/metrics").await.unwrap();
    assert!(
        body.contains("fim_snapshot_storage_attempts_total{result=\"success\"} 1"),
        "{body}"
    );
    api.delete("app", &DeleteParams::default()).await.unwrap();
    wait_for("app gone", WAIT, || {
        let api = api.clone();
        async move {
            Ok(if api.get_opt("app").await?.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending("present".into())
            })
        }
    })
    .await
    .unwrap();
    let _ = minio.kill();
    let _ = minio.wait();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_2mb_snapshot_uploaded_by_the_cli_and_a_tampered_object_refused() {
    let client = client().await.unwrap();
    let (ns, bucket) = setup(&client, "snap-cli").await;
    let endpoint = env("S3_ENDPOINT");
    let _op = operator(&ns.name, Some((&endpoint, &bucket)));
    let api: Api<Snapshot> = Api::namespaced(client.clone(), &ns.name);
    let s3 = store(&endpoint, &bucket);

    // A 2 MB snapshot: ~24,000 files of 90-byte lines, hashed by the CLI from a directory.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for i in 0..24_000 {
        let d = root.join(format!("app/d{:03}", i % 100));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("file-{i:06}")), i.to_string()).unwrap();
    }
    // The bucket must exist before the CLI writes (the operator creates it once it uploads).
    kube_fim_e2e::s3(Some(&bucket))
        .unwrap()
        .ensure()
        .await
        .unwrap();
    let manifest = dir.path().join("snap.yaml");
    let out = Command::new(agent_binary())
        .args(["snapshot", "--root", root.to_str().unwrap(), "--dir", "app"])
        .args([
            "--image",
            "registry:5000/big:1",
            "--output-cr",
            "big",
            "--namespace",
            &ns.name,
        ])
        .args(["--upload", "--out", manifest.to_str().unwrap()])
        .args(["--s3-endpoint", &endpoint, "--s3-bucket", &bucket])
        .env("AWS_ACCESS_KEY_ID", env("AWS_ACCESS_KEY_ID"))
        .env("AWS_SECRET_ACCESS_KEY", env("AWS_SECRET_ACCESS_KEY"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: Snapshot =
        serde_saphyr::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let source = snap.spec.source.clone().expect("spec.source");
    assert_eq!(snap.spec.hashes, None);
    let key = format!("{}/registry:5000/big/1.sha256", ns.name);
    assert_eq!(source.key, key);
    let data = s3.get(&key).await.unwrap().unwrap();
    assert!(data.len() >= 2_000_000, "{} bytes", data.len());
    assert_eq!(sha256_hex(&data), source.sha256);
    api.create(&PostParams::default(), &snap).await.unwrap();
    let s = wait_snapshot(&api, "big", "big validated", uploaded).await;
    assert_eq!(s.status.as_ref().unwrap().files, Some(24_000));
    assert_eq!(
        s.status.as_ref().unwrap().control_hash.as_deref(),
        Some(source.sha256.as_str())
    );
    assert_eq!(load(&s, Some(&s3)).await.unwrap(), data);

    // Replaced behind the operator's back: the loader refuses it, naming the Snapshot.
    let mut tampered = data.clone();
    tampered[..64].copy_from_slice(&[b'0'; 64]);
    s3.put(&key, tampered).await.unwrap();
    let err = load(&s, Some(&s3)).await.unwrap_err();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Snapshot {}/big", ns.name)),
        "{err}"
    );
    api.delete("big", &DeleteParams::default()).await.unwrap();
    ns.delete().await.unwrap();
}
