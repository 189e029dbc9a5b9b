//! OLM (issue 16): the bundle passes operator-framework/api's validators, the committed catalog is
//! what `make catalog` renders and `opm validate` accepts it, and a real Operator Lifecycle Manager
//! (olm-operator and catalog-operator of the pinned module, run as processes against the local
//! cluster with OLM's CRDs) installs kube-fim from `opm serve catalog/` through a CatalogSource,
//! an OperatorGroup and a Subscription, then upgrades it to a second bundle version through the
//! channel.
//!
//! The OLM components are built once into ~/.cache/kube-fim/bin (e2e/olm/go.mod pins them); the
//! first run pays a few minutes of Go build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use kube_fim_e2e::{
    Poll, TestNamespace, client, cluster_env, kubeconfig_path, must_run, repo_root, run_in_repo,
    wait_for,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(300);

/// Builds (once) and returns a component of e2e/olm/go.mod (`opm`, `bundle-validate`, ...).
fn component(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source e2e/scripts/lib.sh && e2e/scripts/build-components.sh {name} >&2 && component_bin {name}"
        ))
        .current_dir(repo_root())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

const CSV_FILE: &str = "manifests/kube-fim.clusterserviceversion.yaml";

#[test]
fn the_bundle_passes_the_operatorframework_validators_and_a_broken_one_does_not() {
    let validate = component("bundle-validate");
    let bundle = repo_root().join("bundle");
    let (ok, out, err) = run_in_repo(&validate, &[bundle.to_str().unwrap()], &[]);
    assert!(ok, "bundle/ is not valid:\n{out}\n{err}");
    assert!(out.contains("kube-fim.v"), "{out}");
    assert!(!out.contains("ERROR"), "{out}");

    // The same bundle with errors the validators must catch: a capability level that does not
    // exist, no displayName, and an owned CRD whose manifest is missing.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("bundle");
    copy_dir(&bundle, &broken);
    let csv_path = broken.join(CSV_FILE);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let csv = csv
        .replace("capabilities: Basic Install", "capabilities: Bogus Level")
        .replace("\n  displayName: kube-fim\n", "\n");
    std::fs::write(&csv_path, csv).unwrap();
    std::fs::remove_file(broken.join("manifests/fim.kubefim.io_snapshots.yaml")).unwrap();
    let (ok, out, _) = run_in_repo(&validate, &[broken.to_str().unwrap()], &[]);
    assert!(!ok, "a broken bundle passed:\n{out}");
    for want in ["Bogus Level", "DisplayName", "Snapshot"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ERROR") && l.contains(want)),
            "no error about {want}:\n{out}"
        );
    }
}

#[test]
fn the_committed_catalog_is_what_make_catalog_renders_and_opm_validates_it() {
    let opm = component("opm");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("catalog");
    must_run(Path::new("hack/catalog.sh"), &[out.to_str().unwrap()], &[]);
    let rendered = std::fs::read_to_string(out.join("kube-fim/catalog.yaml")).unwrap();
    let committed =
        std::fs::read_to_string(repo_root().join("catalog/kube-fim/catalog.yaml")).unwrap();
    assert!(
        rendered == committed,
        "catalog/ differs from what `make catalog` renders; run `make catalog`"
    );
    for want in [
        "schema: olm.package",
        "schema: olm.channel",
        "schema: olm.bundle",
        "defaultChannel: alpha",
        "skipRange: '<",
        "type: olm.bundle.object",
    ] {
        assert!(
            committed.contains(want),
            "{want} not in catalog:\n{committed}"
        );
    }
    let catalog = repo_root().join("catalog");
    must_run(&opm, &["validate", catalog.to_str().unwrap()], &[]);

    // A channel entry naming no bundle is refused.
    let broken = tmp.path().join("broken");
    copy_dir(&catalog, &broken);
    let file = broken.join("kube-fim/catalog.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("- name: kube-fim.v", "- name: kube-fim.v9"),
    )
    .unwrap();
    let (ok, _, err) = run_in_repo(&opm, &["validate", broken.to_str().unwrap()], &[]);
    assert!(
        !ok,
        "opm validate accepted a channel entry without a bundle"
    );
    assert!(err.contains("not found"), "{err}");
}

fn olm_ar(kind: &str, version: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("operators.coreos.com", version, kind),
        plural,
    )
}

/// `hack/catalog-deploy.sh` (what `make catalog-deploy` runs) for `namespace` from `catalog`;
/// returns the CSV it reports Succeeded.
fn catalog_deploy(namespace: &str, catalog: &Path) -> String {
    let env = cluster_env().unwrap();
    let kubectl = env.get("KUBECTL").expect("KUBECTL in e2e/.cluster/env");
    let kubeconfig = kubeconfig_path();
    let stdout = must_run(
        Path::new("hack/catalog-deploy.sh"),
        &[],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("KUBECTL", kubectl),
            ("NAMESPACE", namespace),
            ("CATALOG_DIR", catalog.to_str().unwrap()),
            // On a kwok node, where kwok "runs" anything (the namespace's node selector makes
            // sure of it).
            ("NODE_SELECTOR", "type=kwok"),
            ("WAIT", "300"),
        ],
    );
    stdout.trim().lines().last().unwrap_or_default().to_owned()
}

async fn csv_phase(client: &Client, ns: &str, name: &str) -> Option<String> {
    let csvs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &olm_ar(
            "ClusterServiceVersion",
            "v1alpha1",
            "clusterserviceversions",
        ),
    );
    let csv = csvs.get_opt(name).await.ok()??;
    csv.data["status"]["phase"].as_str().map(str::to_owned)
}

fn crate_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// The next patch version of this workspace's version (the upgrade's target).
fn next_version() -> String {
    let v = crate_version();
    let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    parts[2] += 1;
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

#[tokio::test]
async fn olm_installs_kube_fim_from_the_catalog_and_upgrades_it_through_the_channel() {
    let client = client().await.unwrap();
    let ns = TestNamespace::create(&client, "olm").await.unwrap();
    let ns_name = ns.name.clone();
    // The agents need the privileged Pod Security level (the CSV's suggested namespace says so).
    // Every pod of the namespace goes to a kwok node (PodNodeSelector, enabled by cluster-up):
    // the operator image is on the real node only when real_node.rs imported it there, and the
    // Subscription's nodeSelector (NODE_SELECTOR) is not enough: OLM applies it only once the
    // Subscription's status names the CSV, and a first Deployment written before that keeps its
    // pod wherever it landed until it is ready (seen: ImagePullBackOff on the real node).
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns_name,
            &PatchParams::apply("kube-fim-e2e"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {
                    "name": ns_name,
                    "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
                    "annotations": {"scheduler.alpha.kubernetes.io/node-selector": "type=kwok"},
                },
            })),
        )
        .await
        .unwrap();

    // ---- install v<version> from the committed catalog ----
    let first = format!("kube-fim.v{}", crate_version());
    let installed = catalog_deploy(&ns_name, &repo_root().join("catalog"));
    assert_eq!(installed, first);
    assert_eq!(
        csv_phase(&client, &ns_name, &first).await.as_deref(),
        Some("Succeeded")
    );

    // The InstallPlan OLM made and ran for the Subscription.
    let plans: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns_name,
        &olm_ar("InstallPlan", "v1alpha1", "installplans"),
    );
    let plan_list = plans.list(&ListParams::default()).await.unwrap();
    let plan = plan_list
        .items
        .iter()
        .find(|p| {
            p.data["spec"]["clusterServiceVersionNames"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == &json!(first)))
        })
        .unwrap_or_else(|| panic!("no InstallPlan for {first}"));
    // The CSV can succeed a moment before the plan records its last step.
    let plan_name = plan.metadata.name.clone().unwrap();
    let plan = wait_for("the InstallPlan Complete", WAIT, || async {
        let p = plans.get(&plan_name).await?;
        Ok(match p.data["status"]["phase"].as_str() {
            Some("Complete") => Poll::Ready(p),
            other => Poll::Pending(format!("phase {other:?}")),
        })
    })
    .await
    .unwrap();
    let kinds: Vec<&str> = plan.data["status"]["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["resource"]["kind"].as_str())
        .collect();
    for want in [
        "ClusterServiceVersion",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Service",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(&want), "{want} not in the plan: {kinds:?}");
    }

    // What the CSV installed: the operator Deployment (available on a kwok node), both service
    // accounts and the metrics Service.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
    let d = deployments.get("fim-operator").await.unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("ghcr.io/kube-fim/fim-operator:v{}", crate_version()).as_str())
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("fim-operator"));
    let args = c.args.clone().unwrap_or_default();
    assert!(
        args.contains(&format!(
            "--agent-image=ghcr.io/kube-fim/fim-agent:v{}",
            crate_version()
        )),
        "{args:?}"
    );
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns_name);
    for sa in ["fim-operator", "fim-agent"] {
        assert!(sas.get_opt(sa).await.unwrap().is_some(), "no {sa}");
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns_name);
    assert!(
        services
            .get_opt("fim-operator-metrics")
            .await
            .unwrap()
            .is_some()
    );

    // ---- upgrade: a second bundle version replaces the first through the channel ----
    let tmp = tempfile::tempdir().unwrap();
    let second_version = next_version();
    let second = format!("kube-fim.v{second_version}");
    let bundle2 = tmp.path().join("bundle2");
    must_run(
        &kube_fim_e2e::fixtures::binary("bundlegen", "kube-fim-crds"),
        &[
            "--out",
            bundle2.to_str().unwrap(),
            "--version",
            &second_version,
        ],
        &[],
    );
    let catalog2 = tmp.path().join("catalog2");
    let bundle1 = repo_root().join("bundle");
    must_run(
        Path::new("hack/catalog.sh"),
        &[
            catalog2.to_str().unwrap(),
            bundle1.to_str().unwrap(),
            bundle2.to_str().unwrap(),
        ],
        &[],
    );
    let text = std::fs::read_to_string(catalog2.join("kube-fim/catalog.yaml")).unwrap();
    assert!(text.contains(&format!("replaces: {first}")), "{text}");
    let upgraded = catalog_deploy(&ns_name, &catalog2);
    assert_eq!(upgraded, second);
    assert_eq!(
        csv_phase(&client, &ns_name, &second).await.as_deref(),
        Some("Succeeded")
    );
    // The old CSV is replaced (OLM deletes it once the new one succeeded), and the Deployment runs
    // the new version's image.
    wait_for("the first CSV to be replaced", WAIT, || async {
        Ok(match csv_phase(&client, &ns_name, &first).await {
            None => Poll::Ready(()),
            Some(phase) => Poll::Pending(format!("{first} still there: {phase}")),
        })
    })
    .await
    .unwrap();
    let image = format!("ghcr.io/kube-fim/fim-operator:v{second_version}");
    wait_for("the Deployment on the new image", WAIT, || async {
        let d = deployments.get("fim-operator").await?;
        let now = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default();
        Ok(if now == image {
            Poll::Ready(())
        } else {
            Poll::Pending(now)
        })
    })
    .await
    .unwrap();

    ns.delete().await.unwrap();
}
