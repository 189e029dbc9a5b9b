//! The operator's DaemonSet starts `fim-agent daemon` with a command line and environment that
//! the agent must accept as meant: this parses the desired DaemonSet's container args with the
//! agent's own argument definitions.

use clap::Parser;
use fim_agent::daemon::DaemonArgs;
use fim_operator::daemonset::{AgentOptions, AgentS3, desired_daemonset};
use kube_fim_crds::FileIntegrity;

#[derive(Parser)]
struct AgentCli {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(clap::Subcommand)]
enum AgentCommand {
    Daemon(DaemonArgs),
}

fn file_integrity(spec: serde_json::Value) -> FileIntegrity {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {"name": "worker-fi", "namespace": "kube-fim", "uid": "u-1"},
        "spec": spec,
    }))
    .unwrap()
}

fn agent_args(fi: &FileIntegrity) -> (DaemonArgs, Vec<String>) {
    agent_args_with(
        fi,
        &AgentOptions::new("img", "kube-fim", "fim-agent", "fim-config-worker-fi"),
    )
}

fn agent_args_with(fi: &FileIntegrity, opts: &AgentOptions) -> (DaemonArgs, Vec<String>) {
    let ds = desired_daemonset(fi, opts).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let env: Vec<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    let mut argv = vec!["fim-agent".to_owned()];
    argv.extend(container.args.clone().unwrap_or_default());
    // The downward API fills these in the pod.
    // SAFETY: tests in this file do not read the environment concurrently with this write.
    unsafe {
        std::env::set_var("NODE_NAME", "node-a");
        std::env::set_var("POD_NAMESPACE", "kube-fim");
    }
    let cli = AgentCli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the agent refuses {argv:?}:\n{e}"));
    let AgentCommand::Daemon(args) = cli.command;
    (args, env)
}

#[test]
fn the_agent_accepts_the_daemonset_command_line() {
    let fi = file_integrity(serde_json::json!({
        "config": {"gracePeriod": 60, "maxBackups": 2},
        "fullScanEvery": 3600,
        "realtime": true,
        "debug": true,
        "containers": {"enabled": true, "algorithm": "SHA256"},
    }));
    let (args, env) = agent_args(&fi);
    assert_eq!(args.file_integrity, "worker-fi");
    assert_eq!(args.node, "node-a");
    assert_eq!(args.namespace, "kube-fim");
    assert_eq!(args.config_map, "fim-config-worker-fi");
    assert_eq!(args.full_scan_every, Some(3600));
    assert!(args.realtime && args.containers);
    // Followed live from the FileIntegrity, never in the pod template (a change must not roll
    // the pods): the flags keep their start values.
    assert_eq!(args.grace_period, 900);
    assert_eq!(args.max_backups, 5);
    assert!(!args.debug);
    assert_eq!(args.root.to_str(), Some("/host"));
    assert_eq!(args.db_dir.to_str(), Some("/baseline"));
    assert_eq!(args.metrics_addr.port(), 8080);
    for var in ["NODE_NAME", "POD_NAMESPACE"] {
        assert!(
            env.iter().any(|e| e == var),
            "{var} not set on the agent: {env:?}"
        );
    }
}

#[test]
fn the_agent_reads_snapshots_from_the_bucket_the_operator_names() {
    // Issue 14: `--agent-s3-endpoint`/`--agent-s3-credentials-secret` reach the agent's loader as
    // its own S3 flags, the keys as the variables it reads them from.
    let fi = file_integrity(serde_json::json!({"containers": {"enabled": true}}));
    let opts = AgentOptions {
        s3: Some(AgentS3 {
            endpoint: "http://minio.minio:9000".into(),
            bucket: "snapshots".into(),
            region: "eu-west-1".into(),
            credentials_secret: "fim-agent-s3".into(),
        }),
        ..AgentOptions::new("img", "kube-fim", "fim-agent", "fim-config-worker-fi")
    };
    let (args, env) = agent_args_with(&fi, &opts);
    assert_eq!(args.s3.endpoint.as_deref(), Some("http://minio.minio:9000"));
    assert_eq!(args.s3.bucket, "snapshots");
    assert_eq!(args.s3.region, "eu-west-1");
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(env.iter().any(|e| e == var), "{var} not set: {env:?}");
    }
}

#[test]
fn defaults_are_the_agent_defaults() {
    let (args, _) = agent_args(&file_integrity(serde_json::json!({})));
    assert_eq!(args.grace_period, 900);
    assert_eq!(args.max_backups, 5);
    assert_eq!(args.full_scan_every, None);
}
