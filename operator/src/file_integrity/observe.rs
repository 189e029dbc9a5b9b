//! Step 1 of a reconcile: every read. The FileIntegrity comes from the controller's cache, node
//! statuses and nodes from the reflector caches the watches fill (no API read that grows with
//! the number of nodes); the ConfigMaps, the PriorityClass and the agent DaemonSet are read from
//! the API server, and so is each node whose status looks orphaned (the node cache can lag).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Node},
        scheduling::v1::PriorityClass,
    },
    jiff::Timestamp,
};
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus};

use super::{Context, index::belongs_to};
use crate::{
    Error, Result,
    config::{self, ConfigSource},
    daemonset,
    events::NodeEventKey,
    phase::PriorityClassCheck,
};

/// Everything [`super::plan::plan`] looks at, as read at one moment.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The FileIntegrity.
    pub fi: Arc<FileIntegrity>,
    /// When the reads were made.
    pub now: Timestamp,
    /// The ConfigMap `spec.config` names (`None`: no such ConfigMap, or the default rules).
    pub user_config_map: Option<ConfigMap>,
    /// The rules ConfigMap the operator wrote, `fim-config-<fi>`, as it is now.
    pub rendered_config_map: Option<ConfigMap>,
    /// Whether `spec.priorityClassName` exists.
    pub priority_class: PriorityClassCheck,
    /// The agent DaemonSet as it is now.
    pub daemonset: Option<DaemonSet>,
    /// The FileIntegrity's node statuses, ordered by name (as a LIST returns them).
    pub node_statuses: Vec<Arc<FileIntegrityNodeStatus>>,
    /// Every node (labels and taints; no status).
    pub nodes: Vec<Arc<Node>>,
    /// Nodes of node statuses that are not in the node cache and that the API server confirmed
    /// absent.
    pub gone_nodes: BTreeSet<String>,
    /// What the last `NodeIntegrityStatus` event of this FileIntegrity said, per node.
    pub announced: BTreeMap<String, NodeEventKey>,
    /// Workloads whose container remediation the backoff suppressed, with when (seconds).
    pub suppressed: BTreeMap<String, i64>,
}

/// Reads what a reconcile of `fi` needs.
pub async fn observe(fi: Arc<FileIntegrity>, ctx: &Context) -> Result<Observed> {
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let now = Timestamp::now();

    let user_config_map = match ConfigSource::of(&fi) {
        ConfigSource::Default => None,
        ConfigSource::ConfigMap {
            namespace: cm_ns,
            name: cm_name,
            ..
        } => Api::<ConfigMap>::namespaced(ctx.client.clone(), &cm_ns)
            .get_opt(&cm_name)
            .await
            .map_err(Error::kube(format!("reading ConfigMap {cm_ns}/{cm_name}")))?,
    };
    let rendered = config::config_map_name(&name);
    let rendered_config_map = Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&rendered)
        .await
        .map_err(Error::kube(format!("reading ConfigMap {rendered}")))?;
    let priority_class = priority_class(&fi, ctx).await?;
    let ds_name = daemonset::daemonset_name(&name);
    let daemonset = Api::<DaemonSet>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&ds_name)
        .await
        .map_err(Error::kube(format!("reading DaemonSet {ds_name}")))?;

    let uid = fi.uid();
    let node_statuses: Vec<Arc<FileIntegrityNodeStatus>> = ctx
        .status_index
        .names_of(&name)
        .iter()
        .filter_map(|s| ctx.statuses.get(&ObjectRef::new(s).within(&namespace)))
        .filter(|s| belongs_to(s, &name, uid.as_deref()))
        .collect();
    let nodes = ctx.nodes.state();
    let cached: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    // The node cache can lag the node status cache (separate watches): only the API server
    // says a node is gone.
    let missing: BTreeSet<&str> = node_statuses
        .iter()
        .map(|s| s.spec.node_name.as_str())
        .filter(|n| !cached.contains(n))
        .collect();
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    let mut gone_nodes = BTreeSet::new();
    for node in missing {
        let found = node_api
            .get_metadata_opt(node)
            .await
            .map_err(Error::kube(format!("reading node {node}")))?;
        match found {
            None => {
                gone_nodes.insert(node.to_owned());
            }
            Some(_) => tracing::debug!(fi = %name, %node, "node not cached yet; status kept"),
        }
    }
    let announced = ctx.announced(&namespace, &name);
    let suppressed = ctx
        .containers
        .lock()
        .expect("container memory poisoned")
        .suppressed(&namespace, &name);
    Ok(Observed {
        fi,
        now,
        user_config_map,
        rendered_config_map,
        priority_class,
        daemonset,
        node_statuses,
        nodes,
        gone_nodes,
        announced,
        suppressed,
    })
}

/// Whether `spec.priorityClassName` (if any) names an existing PriorityClass.
async fn priority_class(fi: &FileIntegrity, ctx: &Context) -> Result<PriorityClassCheck> {
    let Some(class) = fi
        .spec
        .priority_class_name
        .as_deref()
        .filter(|c| !c.is_empty())
    else {
        return Ok(PriorityClassCheck::NotRequested);
    };
    let found = Api::<PriorityClass>::all(ctx.client.clone())
        .get_opt(class)
        .await
        .map_err(Error::kube(format!("reading PriorityClass {class}")))?;
    Ok(match found {
        Some(_) => PriorityClassCheck::Found(class.to_owned()),
        None => PriorityClassCheck::Missing(class.to_owned()),
    })
}
