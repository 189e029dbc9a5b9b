//! Real `fim-agent daemon` processes standing in for the agent DaemonSet's pods: each one has its
//! own root tree (the node's filesystem), its own baseline directory, and a kubeconfig with a
//! service-account token bound to the agent pod kwok runs on its node, so the API server sees
//! exactly what a real agent pod would send.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};

use crate::fixtures::agent_binary;
use crate::{E2eError, Result, free_port, kubeconfig_path, pod_bound_token, state_dir};

/// How an agent is started (the flags the operator's DaemonSet would pass).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub file_integrity: String,
    pub namespace: String,
    pub node: String,
    pub grace_period: u64,
    pub max_backups: u32,
    pub realtime: bool,
    /// `fanotify` or `inotify`; the agent's choice when `None`.
    pub realtime_backend: Option<String>,
}

/// One agent process; killed when dropped. Its log is `e2e/.cluster/logs/agent-<ns>-<node>.log`.
pub struct AgentProcess {
    pub spec: AgentSpec,
    /// The node's filesystem.
    pub root: PathBuf,
    /// The baseline directory (the hostPath).
    pub db_dir: PathBuf,
    pub metrics_port: u16,
    /// Flags appended to the command line (e.g. `--full-scan-every`).
    pub extra_args: Vec<String>,
    /// `RUST_LOG` of the process (`info,fim_agent=debug` unless started with
    /// [`AgentProcess::start_without_rust_log`]); `None` leaves it unset, so `spec.debug` decides.
    pub rust_log: Option<String>,
    kubeconfig: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// A kubeconfig like the admin one, but authenticating with `token` and pointing at `server`
/// (to put a proxy between an agent and the API server) when given.
pub fn token_kubeconfig(token: &str, server: Option<&str>, path: &Path) -> Result<()> {
    let mut config =
        Kubeconfig::read_from(kubeconfig_path()).map_err(|e| E2eError::NoCluster(e.to_string()))?;
    let user = config
        .auth_infos
        .first()
        .map(|a| a.name.clone())
        .unwrap_or_else(|| "agent".into());
    config.auth_infos = vec![NamedAuthInfo {
        name: user,
        auth_info: Some(AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        }),
        other: Default::default(),
    }];
    if let Some(server) = server {
        for cluster in &mut config.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                c.server = Some(server.to_owned());
            }
        }
    }
    // JSON is YAML: the kubeconfig loader reads it.
    let text = serde_json::to_string_pretty(&config).map_err(|e| E2eError::Other(e.to_string()))?;
    std::fs::write(path, text)?;
    Ok(())
}

impl AgentProcess {
    /// Prepares the agent of `spec.node` (its pod is `pod`) under `dir`, with a root tree made by
    /// `make_tree`, and starts it.
    pub async fn start(
        client: &Client,
        spec: AgentSpec,
        pod: &Pod,
        dir: &Path,
        server: Option<&str>,
        make_tree: impl FnOnce(&Path),
    ) -> Result<AgentProcess> {
        Self::start_with_args(client, spec, pod, dir, server, Vec::new(), make_tree).await
    }

    /// [`AgentProcess::start`] without `RUST_LOG`: the log level follows the FileIntegrity's
    /// `spec.debug`, as in an agent pod.
    pub async fn start_without_rust_log(
        client: &Client,
        spec: AgentSpec,
        pod: &Pod,
        dir: &Path,
        make_tree: impl FnOnce(&Path),
    ) -> Result<AgentProcess> {
        Self::start_full(client, spec, pod, dir, None, Vec::new(), None, make_tree).await
    }

    /// [`AgentProcess::start`] with `extra_args` appended to the agent's command line.
    pub async fn start_with_args(
        client: &Client,
        spec: AgentSpec,
        pod: &Pod,
        dir: &Path,
        server: Option<&str>,
        extra_args: Vec<String>,
        make_tree: impl FnOnce(&Path),
    ) -> Result<AgentProcess> {
        Self::start_full(
            client,
            spec,
            pod,
            dir,
            server,
            extra_args,
            Some("info,fim_agent=debug".into()),
            make_tree,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_full(
        client: &Client,
        spec: AgentSpec,
        pod: &Pod,
        dir: &Path,
        server: Option<&str>,
        extra_args: Vec<String>,
        rust_log: Option<String>,
        make_tree: impl FnOnce(&Path),
    ) -> Result<AgentProcess> {
        let base = dir.join(&spec.node);
        let root = base.join("root");
        let db_dir = base.join("baseline");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&db_dir)?;
        make_tree(&root);
        let token = pod_bound_token(client, &spec.namespace, "fim-agent", pod).await?;
        let kubeconfig = base.join("kubeconfig");
        token_kubeconfig(&token, server, &kubeconfig)?;
        let logs = state_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("agent-{}-{}.log", spec.namespace, spec.node));
        let mut agent = AgentProcess {
            spec,
            root,
            db_dir,
            metrics_port: free_port()?,
            extra_args,
            rust_log,
            kubeconfig,
            child: None,
            log,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// The agent's command line (what `spawn` runs), e.g. to start a second agent on the same
    /// baseline directory.
    pub fn command(&self) -> Command {
        let s = &self.spec;
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--file-integrity".into(),
            s.file_integrity.clone(),
            "--namespace".into(),
            s.namespace.clone(),
            "--node".into(),
            s.node.clone(),
            "--root".into(),
            self.root.display().to_string(),
            "--db-dir".into(),
            self.db_dir.display().to_string(),
            "--config-map".into(),
            format!("fim-config-{}", s.file_integrity),
            "--grace-period".into(),
            s.grace_period.to_string(),
            "--max-backups".into(),
            s.max_backups.to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", self.metrics_port),
            "--threads".into(),
            "1".into(),
        ];
        if s.realtime {
            args.push("--realtime".into());
        }
        if let Some(backend) = &s.realtime_backend {
            args.extend(["--realtime-backend".into(), backend.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        let mut command = Command::new(agent_binary());
        command
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        if let Some(filter) = &self.rust_log {
            command.env("RUST_LOG", filter);
        }
        command
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command()
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| E2eError::Other(format!("cannot start fim-agent: {e}")))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then waits for the process to end (killing it after 20 s); its exit status, or
    /// `None` when it had to be killed or was not running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc_kill(child.id() as i32, 15);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Kills the process without warning (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same root, baseline and identity.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.stop();
        self.spawn()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
