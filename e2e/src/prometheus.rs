//! A real Prometheus (Debian's package) started for one test, scraping the targets it is given
//! (over HTTPS with the scraper's bearer token, as the secure metrics endpoints require), and
//! answering instant queries through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{E2eError, Poll, Result, free_port, wait_for};

pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, kube-fim metrics endpoints: HTTPS,
    /// self-signed, with the shared scraper's token) every second, plus any `rule_files`, and
    /// waits until it is ready.
    pub async fn start(targets: &[String], rule_files: &[PathBuf]) -> Result<Prometheus> {
        let token = crate::metrics::scraper_token().await?;
        let targets_yaml: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Prometheus::start_with(
            |dir| {
                let token_file = dir.join("token");
                std::fs::write(&token_file, &token)?;
                Ok(format!(
                    "  - job_name: e2e\n    scheme: https\n    tls_config:\n      insecure_skip_verify: true\n    authorization:\n      credentials_file: '{}'\n    static_configs:\n      - targets: [{}]\n",
                    token_file.display(),
                    targets_yaml.join(", ")
                ))
            },
            rule_files,
        )
        .await
    }

    /// Starts Prometheus with the `scrape_configs` entries `scrape` returns (YAML list items,
    /// indented by two spaces; `scrape` may write files they refer to into the directory it is
    /// given), plus any `rule_files`, every second, and waits until it is ready.
    pub async fn start_with(
        scrape: impl FnOnce(&std::path::Path) -> std::io::Result<String>,
        rule_files: &[PathBuf],
    ) -> Result<Prometheus> {
        let binary = which("prometheus").ok_or_else(|| {
            E2eError::Other(
                "prometheus is not installed (Debian package `prometheus`; make test installs it)"
                    .into(),
            )
        })?;
        let dir = tempfile::tempdir().map_err(|e| E2eError::Other(e.to_string()))?;
        let port = free_port()?;
        let scrape_configs = scrape(dir.path()).map_err(|e| E2eError::Other(e.to_string()))?;
        let rules_yaml: Vec<String> = rule_files
            .iter()
            .map(|r| format!("  - '{}'", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n{}",
            rules_yaml.join("\n"),
            scrape_configs
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| E2eError::Other(e.to_string()))?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .map_err(|e| E2eError::Other(e.to_string()))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| E2eError::Other(format!("cannot start prometheus: {e}")))?;
        let prom = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prom.url);
        wait_for(
            "prometheus to become ready",
            Duration::from_secs(60),
            || {
                let ready = ready.clone();
                async move {
                    Ok(
                        match tokio::task::spawn_blocking(move || ureq::get(&ready).call()).await {
                            Ok(Ok(_)) => Poll::Ready(()),
                            Ok(Err(e)) => Poll::Pending(e.to_string()),
                            Err(e) => Poll::Pending(e.to_string()),
                        },
                    )
                }
            },
        )
        .await?;
        Ok(prom)
    }

    /// Runs an instant query and returns the `data.result` array.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/api/v1/query", self.url);
        let promql = promql.to_string();
        let body: serde_json::Value = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .query("query", &promql)
                .call()?
                .body_mut()
                .read_json::<serde_json::Value>()
        })
        .await
        .map_err(|e| E2eError::Other(e.to_string()))?
        .map_err(|e| E2eError::Other(format!("prometheus query failed: {e}")))?;
        match body["data"]["result"].as_array() {
            Some(r) => Ok(r.clone()),
            None => Err(E2eError::Other(format!(
                "unexpected prometheus answer: {body}"
            ))),
        }
    }

    /// The active scrape targets (`data.activeTargets` of `/api/v1/targets`): labels, health,
    /// lastError.
    pub async fn targets(&self) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/api/v1/targets", self.url);
        let body: serde_json::Value = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()?
                .body_mut()
                .read_json::<serde_json::Value>()
        })
        .await
        .map_err(|e| E2eError::Other(e.to_string()))?
        .map_err(|e| E2eError::Other(format!("prometheus targets: {e}")))?;
        Ok(body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `promql` returns at least one series and gives the first sample's value.
    pub async fn wait_for_value(&self, promql: &str, timeout: Duration) -> Result<f64> {
        wait_for(&format!("prometheus query `{promql}`"), timeout, || async {
            let result = self.query(promql).await?;
            Ok(
                match result
                    .first()
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|v| v.parse().ok())
                {
                    Some(v) => Poll::Ready(v),
                    None => Poll::Pending(format!("{result:?}")),
                },
            )
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}
