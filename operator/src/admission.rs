//! The ValidatingAdmissionPolicies that confine each agent pod to its own node's objects, created
//! and kept by the operator for its own namespace and agent service account.
//!
//! The policies are cluster-scoped and name the agent's user (`system:serviceaccount:<ns>:<sa>`),
//! so they cannot be shipped as fixed YAML by every install method: OLM installs no such kind, and
//! a fixed file names one namespace. The template is config/agent/admission_policy.yaml (written for
//! `kube-fim`/`fim-agent`, and still applied by the kustomize install, so the objects the operator
//! applies in `kube-fim` are exactly the kustomize ones). [`agent_policies`] renders it for any
//! namespace and service account: names end in `-<namespace>` so installs in several namespaces
//! keep their own policies, and each object is owned by the operator's Namespace, so deleting the
//! namespace (an uninstall, or an e2e test namespace) lets the garbage collector remove them.
//!
//! [`AdmissionPolicyController`] server-side applies them when this replica starts leading and
//! again every minute (an apply that changes nothing writes nothing), so a deleted or edited
//! policy comes back. Agents are never confined by nothing: `/readyz` waits for the first
//! successful apply, and no agent DaemonSet is written before [`PoliciesInEffect`] opens, which
//! is [`POLICY_LOAD`] after that apply: the API server enforces a new policy only once it has
//! reloaded its policy set (every second: `policyRefreshIntervalDefault` in k8s.io/apiserver's
//! `admission/plugin/policy/generic/policy_source.go`); a write in between is not checked.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

use tokio::sync::watch;

use crate::runtime::{Controller, Ready, Shutdown};

/// config/agent/admission_policy.yaml: the policies for namespace `kube-fim`, service account
/// `fim-agent`.
pub const TEMPLATE: &str = include_str!("../../config/agent/admission_policy.yaml");
const TEMPLATE_NAMESPACE: &str = "kube-fim";
const TEMPLATE_ACCOUNT: &str = "fim-agent";
/// How often the policies are re-applied, and how soon after a failure.
const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);
/// From the first successful apply until the API server enforces what it applied: two of its
/// one-second policy reloads.
pub const POLICY_LOAD: Duration = Duration::from_secs(2);

/// Whether the agents' admission policies are in effect, for the controllers that start agents.
#[derive(Clone, Debug)]
pub struct PoliciesInEffect(watch::Receiver<bool>);

impl PoliciesInEffect {
    /// A gate that opens when the sender sends `true` ([`AdmissionPolicyController::in_effect`]).
    pub fn channel() -> (watch::Sender<bool>, PoliciesInEffect) {
        let (tx, rx) = watch::channel(false);
        (tx, PoliciesInEffect(rx))
    }

    /// Returns once the policies are in effect; never if the sender stopped before they were
    /// (the controller's future is dropped with leadership then).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|in_effect| *in_effect).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("admission policy template: {0}")]
    Template(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn user(namespace: &str, account: &str) -> String {
    format!("'system:serviceaccount:{namespace}:{account}'")
}

/// The policies and bindings for the agents of `namespace` running as `account`, owned by the
/// Namespace with `namespace_uid` when given. Pure: the template with the names, the user and the
/// owner changed, nothing else.
pub fn agent_policies(
    namespace: &str,
    account: &str,
    namespace_uid: Option<&str>,
) -> Result<Vec<Value>, PolicyError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(TEMPLATE).map_err(|e| PolicyError::Template(e.to_string()))?;
    let suffix = format!("-{TEMPLATE_NAMESPACE}");
    let rename = |v: &mut Value| -> Result<(), PolicyError> {
        let name = v
            .as_str()
            .and_then(|n| n.strip_suffix(&suffix))
            .ok_or_else(|| {
                PolicyError::Template(format!("a name does not end in {suffix}: {v}"))
            })?;
        *v = Value::String(format!("{name}-{namespace}"));
        Ok(())
    };
    let (template_user, new_user) = (
        user(TEMPLATE_NAMESPACE, TEMPLATE_ACCOUNT),
        user(namespace, account),
    );
    let mut out = Vec::new();
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        rename(&mut doc["metadata"]["name"])?;
        match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                let conditions = doc["spec"]["matchConditions"]
                    .as_array_mut()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        PolicyError::Template("a policy without matchConditions".into())
                    })?;
                for c in conditions {
                    let expr = c["expression"].as_str().unwrap_or_default();
                    if !expr.contains(&template_user) {
                        return Err(PolicyError::Template(format!(
                            "matchCondition {expr:?} does not name {template_user}"
                        )));
                    }
                    c["expression"] = Value::String(expr.replace(&template_user, &new_user));
                }
            }
            Some("ValidatingAdmissionPolicyBinding") => rename(&mut doc["spec"]["policyName"])?,
            other => return Err(PolicyError::Template(format!("unexpected kind {other:?}"))),
        }
        if let Some(uid) = namespace_uid {
            doc["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Namespace", "name": namespace, "uid": uid,
            }]);
        }
        out.push(doc);
    }
    Ok(out)
}

/// The resource name of a kind of the template.
fn plural(kind: &str) -> &'static str {
    match kind {
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        _ => "validatingadmissionpolicybindings",
    }
}

/// Applies the policies (server-side apply, forced: the operator owns them).
pub async fn apply(client: &Client, namespace: &str, account: &str) -> Result<(), PolicyError> {
    let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
    let uid = ns.metadata.uid;
    let params = PatchParams::apply(kube_fim_crds::labels::OPERATOR_MANAGER).force();
    for doc in agent_policies(namespace, account, uid.as_deref())? {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, plural(kind)),
        );
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.patch(&name, &params, &Patch::Apply(&doc)).await?;
    }
    Ok(())
}

/// Keeps the agents' admission policies applied while this replica leads.
pub struct AdmissionPolicyController {
    pub client: Client,
    pub namespace: String,
    pub agent_service_account: String,
    /// Set to `true` [`POLICY_LOAD`] after the first successful apply.
    pub in_effect: watch::Sender<bool>,
}

impl Controller for AdmissionPolicyController {
    fn name(&self) -> &'static str {
        "admission-policies"
    }

    fn run(self: Box<Self>, ready: Ready, stop: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let keep = async {
                loop {
                    let wait = match apply(
                        &self.client,
                        &self.namespace,
                        &self.agent_service_account,
                    )
                    .await
                    {
                        Ok(()) => {
                            tracing::debug!(namespace = %self.namespace, "agent admission policies applied");
                            ready.set();
                            if !*self.in_effect.borrow() {
                                tokio::time::sleep(POLICY_LOAD).await;
                                self.in_effect.send_replace(true);
                                tracing::info!(namespace = %self.namespace, "agent admission policies in effect");
                            }
                            RESYNC
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot apply the agents' admission policies");
                            RETRY
                        }
                    };
                    tokio::time::sleep(wait).await;
                }
            };
            tokio::select! {
                _ = keep => {}
                _ = stop.requested() => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(docs: &[Value]) -> Vec<String> {
        docs.iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn for_kube_fim_the_policies_are_the_kustomize_ones() {
        let template: Vec<Value> = serde_saphyr::from_multiple(TEMPLATE).unwrap();
        let template: Vec<Value> = template.into_iter().filter(|d| !d.is_null()).collect();
        assert_eq!(
            agent_policies("kube-fim", "fim-agent", None).unwrap(),
            template
        );
        assert_eq!(
            names(&template),
            [
                "ValidatingAdmissionPolicy/fim-agent-own-node-status-kube-fim",
                "ValidatingAdmissionPolicyBinding/fim-agent-own-node-status-kube-fim",
                "ValidatingAdmissionPolicy/fim-agent-own-node-configmaps-kube-fim",
                "ValidatingAdmissionPolicyBinding/fim-agent-own-node-configmaps-kube-fim",
            ]
        );
    }

    #[test]
    fn another_namespace_gets_its_own_names_user_and_owner() {
        let docs = agent_policies("team-a", "agents", Some("uid-1")).unwrap();
        assert_eq!(
            names(&docs),
            [
                "ValidatingAdmissionPolicy/fim-agent-own-node-status-team-a",
                "ValidatingAdmissionPolicyBinding/fim-agent-own-node-status-team-a",
                "ValidatingAdmissionPolicy/fim-agent-own-node-configmaps-team-a",
                "ValidatingAdmissionPolicyBinding/fim-agent-own-node-configmaps-team-a",
            ]
        );
        let text = serde_json::to_string(&docs).unwrap();
        assert!(!text.contains("kube-fim"), "{text}");
        for d in &docs {
            assert_eq!(
                d["metadata"]["ownerReferences"],
                json!([{"apiVersion": "v1", "kind": "Namespace", "name": "team-a", "uid": "uid-1"}])
            );
            match d["kind"].as_str().unwrap() {
                "ValidatingAdmissionPolicy" => assert_eq!(
                    d["spec"]["matchConditions"][0]["expression"],
                    "request.userInfo.username == 'system:serviceaccount:team-a:agents'"
                ),
                _ => assert_eq!(
                    d["spec"]["policyName"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                ),
            }
        }
        // Everything but names, user and owner is the template's.
        let template = agent_policies("kube-fim", "fim-agent", None).unwrap();
        assert_eq!(
            docs[0]["spec"]["validations"],
            template[0]["spec"]["validations"]
        );
        assert_eq!(
            docs[0]["spec"]["variables"],
            template[0]["spec"]["variables"]
        );
    }
}
