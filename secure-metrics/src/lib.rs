//! The metrics endpoint shared by `fim-operator` and `fim-agent`: HTTPS with a serving
//! certificate from a directory (re-read on change) or self-signed, HTTP/1.1 only, and
//! `/metrics` open only to bearer tokens whose user may `get` the non-resource URL `/metrics`
//! (TokenReview + SubjectAccessReview). Health endpoints on the same listener need no token (the
//! kubelet's probes carry none). Plain HTTP without authentication only with
//! `--metrics-insecure`.
//!
//! ```text
//! let endpoint = Endpoint::new(&args, client, &names)?;
//! let app = endpoint.protect(Router::new().route("/metrics", get(metrics)))
//!     .route("/healthz", get(healthz));
//! endpoint.serve(listener, app).await
//! ```

pub mod authz;
mod server;
pub mod tls;

use std::{path::PathBuf, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use kube::Client;
use tokio_rustls::TlsAcceptor;

use authz::{Decision, Reviewer};
pub use tls::TlsError;

/// How the metrics endpoint is secured (flattened into both binaries' flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve the metrics and health endpoints over plain HTTP with no authentication (local
    /// development only: anyone who reaches the port reads the metrics).
    #[arg(long)]
    pub metrics_insecure: bool,
    /// Directory holding tls.crt and tls.key for the metrics endpoint (e.g. a mounted Secret of
    /// type kubernetes.io/tls); a rotated pair is picked up without a restart. Without it, a
    /// self-signed certificate is generated at start.
    #[arg(long, value_name = "DIR", conflicts_with = "metrics_insecure")]
    pub metrics_cert_dir: Option<PathBuf>,
}

/// A configured endpoint: TLS and the token reviewer, or neither (`--metrics-insecure`).
#[derive(Clone)]
pub struct Endpoint {
    tls: Option<TlsAcceptor>,
    reviewer: Option<Arc<Reviewer>>,
}

impl Endpoint {
    /// Loads the certificate (from `--metrics-cert-dir`, else self-signed for `names`: DNS names
    /// or IP addresses the endpoint is reached by). Reviews are sent with `client`.
    pub fn new(args: &MetricsArgs, client: Client, names: &[String]) -> Result<Endpoint, TlsError> {
        if args.metrics_insecure {
            tracing::warn!(
                "--metrics-insecure: /metrics is served over plain HTTP to anyone who reaches it"
            );
            return Ok(Endpoint {
                tls: None,
                reviewer: None,
            });
        }
        let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &args.metrics_cert_dir {
            Some(dir) => {
                tracing::info!(dir = %dir.display(), "metrics endpoint: HTTPS, certificate from files (reloaded on change)");
                Arc::new(tls::DirResolver::new(dir)?)
            }
            None => {
                tracing::info!(?names, "metrics endpoint: HTTPS, self-signed certificate");
                Arc::new(tls::Fixed(tls::self_signed(names)?))
            }
        };
        Ok(Endpoint {
            tls: Some(TlsAcceptor::from(Arc::new(tls::server_config(resolver)?))),
            reviewer: Some(Arc::new(Reviewer::new(client))),
        })
    }

    /// True with `--metrics-insecure` (plain HTTP: probes use scheme HTTP).
    pub fn insecure(&self) -> bool {
        self.tls.is_none()
    }

    /// `routes` (the metrics) answer only requests whose bearer token's user may `get` their
    /// path: 401 without a valid token, 403 without the permission, 500 when the API server
    /// cannot be asked. Unchanged with `--metrics-insecure`.
    pub fn protect<S: Clone + Send + Sync + 'static>(&self, routes: Router<S>) -> Router<S> {
        match &self.reviewer {
            Some(reviewer) => routes.route_layer(axum::middleware::from_fn_with_state(
                reviewer.clone(),
                require_token,
            )),
            None => routes,
        }
    }

    /// Serves `app` on `listener` (HTTP/1.1 only, over TLS unless insecure) until the task is
    /// dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener, app: Router) {
        server::serve(listener, self.tls, app).await
    }
}

async fn require_token(
    State(reviewer): State<Arc<Reviewer>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_owned();
    match reviewer
        .decide(authorization.as_deref(), &verb, &path)
        .await
    {
        Ok(Decision::Allow) => next.run(request).await,
        Ok(Decision::Unauthenticated(why)) => {
            tracing::debug!(%path, %why, "metrics request refused: not authenticated");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized\n",
            )
                .into_response()
        }
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::debug!(%path, %user, %reason, "metrics request refused: not authorized");
            (
                StatusCode::FORBIDDEN,
                format!("Authorization denied for user {user}\n"),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot review a metrics request");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Authentication or authorization failed\n",
            )
                .into_response()
        }
    }
}
