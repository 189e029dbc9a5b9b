//! The agent's calls to the API server. Every write is a server-side apply with the field manager
//! [`labels::AGENT_MANAGER`].

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};

use super::Error;

/// Where the agent reads and writes.
#[derive(Clone)]
pub struct NodeApi {
    pub client: Client,
    pub namespace: String,
    pub file_integrity: String,
    pub node: String,
    pub config_map: String,
    pub config_key: String,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(labels::AGENT_MANAGER).force()
}

impl NodeApi {
    pub async fn file_integrity(&self) -> Result<FileIntegrity, Error> {
        let api: Api<FileIntegrity> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get(&self.file_integrity).await.map_err(Error::Api)
    }

    pub async fn node_status(&self) -> Result<Option<FileIntegrityNodeStatus>, Error> {
        let api: Api<FileIntegrityNodeStatus> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let name = FileIntegrityNodeStatus::name_for(&self.file_integrity, &self.node);
        api.get_opt(&name).await.map_err(Error::Api)
    }

    /// The effective rules the operator validated, or why there are none.
    pub async fn rules(&self) -> Result<String, Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let missing = |what: String| Error::Rules(what);
        let cm = api
            .get_opt(&self.config_map)
            .await
            .map_err(Error::Api)?
            .ok_or_else(|| {
                missing(format!(
                    "ConfigMap {}/{} does not exist",
                    self.namespace, self.config_map
                ))
            })?;
        cm.data
            .and_then(|mut d| d.remove(&self.config_key))
            .ok_or_else(|| {
                missing(format!(
                    "ConfigMap {}/{} has no key {}",
                    self.namespace, self.config_map, self.config_key
                ))
            })
    }

    /// Whether the node is cordoned (`spec.unschedulable`).
    pub async fn node_cordoned(&self) -> Result<bool, Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = api.get(&self.node).await.map_err(Error::Api)?;
        Ok(node.spec.and_then(|s| s.unschedulable).unwrap_or(false))
    }

    pub async fn apply_node_status(&self, status: &FileIntegrityNodeStatus) -> Result<(), Error> {
        let api: Api<FileIntegrityNodeStatus> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let name = status.metadata.name.as_deref().unwrap_or_default();
        api.patch(name, &apply_params(), &Patch::Apply(status))
            .await
            .map_err(Error::Api)?;
        Ok(())
    }

    pub async fn apply_config_map(&self, cm: &ConfigMap) -> Result<(), Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = cm.metadata.name.as_deref().unwrap_or_default();
        api.patch(name, &apply_params(), &Patch::Apply(cm))
            .await
            .map_err(Error::Api)?;
        Ok(())
    }
}
