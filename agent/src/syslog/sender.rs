//! Delivery: a bounded queue filled without blocking (from the scanning thread too), drained by
//! one task that connects (TCP, UDP or TLS), reconnects with capped backoff, and keeps the line it
//! could not write for the next connection. Lines are dropped only when the queue is full; the
//! count goes to `fim_agent_syslog_dropped_total` and, once a connection is up, into a line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::format::{self, Event, Format, Framing, Origin};
use super::metrics::SyslogMetrics;
use super::{Identity, dropped, heartbeat};

/// Lines the queue holds while the server is away.
pub const DEFAULT_CAPACITY: usize = 10_000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connect or write taking longer counts as failed (a stalled server must not hold lines).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Tls,
}

/// Where and how to send (from `spec.alerts.syslog`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    /// TCP only: TLS always counts octets (RFC 5425), UDP sends datagrams.
    pub framing: Framing,
    pub format: Format,
    pub heartbeat: Duration,
    pub cluster: String,
    /// PEM CA certificates trusted for TLS.
    pub ca_pem: Option<Vec<u8>>,
}

impl Config {
    fn framing(&self) -> Framing {
        match self.transport {
            Transport::Udp => Framing::Datagram,
            Transport::Tls => Framing::OctetCounting,
            Transport::Tcp => self.framing,
        }
    }
}

/// The handle the agent keeps: queue lines, change the configuration.
#[derive(Clone)]
pub struct Syslog {
    queue: mpsc::Sender<Event>,
    config: watch::Sender<Option<Config>>,
    unreported_drops: Arc<AtomicU64>,
    metrics: SyslogMetrics,
}

impl Syslog {
    /// Starts the sending and heartbeat tasks on the current runtime; nothing is sent until
    /// [`Syslog::configure`] gives a destination.
    pub fn start(identity: Identity, capacity: usize, metrics: SyslogMetrics) -> Syslog {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let (config, config_rx) = watch::channel(None);
        let s = Syslog {
            queue,
            config,
            unreported_drops: Arc::new(AtomicU64::new(0)),
            metrics,
        };
        let origin = Origin {
            hostname: identity.node.clone(),
            pid: std::process::id(),
        };
        tokio::spawn(send_loop(
            rx,
            config_rx.clone(),
            origin,
            identity.clone(),
            s.unreported_drops.clone(),
            s.metrics.clone(),
        ));
        tokio::spawn(heartbeats(s.clone(), config_rx, identity));
        s
    }

    /// Sets (or, with `None`, removes) the destination. The queue is kept across changes.
    pub fn configure(&self, config: Option<Config>) {
        self.config.send_if_modified(|c| {
            let changed = *c != config;
            *c = config;
            changed
        });
    }

    pub fn config(&self) -> Option<Config> {
        self.config.borrow().clone()
    }

    /// Queues `e` without waiting. Returns false when it was dropped (queue full) or syslog is
    /// not configured (then nothing is queued and nothing counted).
    pub fn send(&self, e: Event) -> bool {
        if self.config.borrow().is_none() {
            return false;
        }
        match self.queue.try_send(e) {
            Ok(()) => {
                self.metrics.queued.inc();
                true
            }
            Err(_) => {
                self.metrics.dropped.inc();
                self.unreported_drops.fetch_add(1, Ordering::SeqCst);
                false
            }
        }
    }
}

/// Queues a heartbeat now and every `heartbeat` (restarting the cadence when it changes).
async fn heartbeats(s: Syslog, mut config: watch::Receiver<Option<Config>>, id: Identity) {
    loop {
        let current = config.borrow_and_update().clone();
        match current {
            None => {
                if config.changed().await.is_err() {
                    return;
                }
            }
            Some(c) => {
                let mut every = tokio::time::interval(c.heartbeat.max(Duration::from_secs(1)));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            s.send(heartbeat(&id, &c.cluster, Timestamp::now()));
                        }
                        r = config.changed() => {
                            if r.is_err() {
                                return;
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl Conn {
    async fn open(c: &Config) -> std::io::Result<Conn> {
        let addr = (c.host.as_str(), c.port);
        match c.transport {
            Transport::Udp => {
                let target = tokio::net::lookup_host(addr)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                let local = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(target).await?;
                Ok(Conn::Udp(sock))
            }
            Transport::Tcp => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Transport::Tls => {
                let tls = tls_config(c.ca_pem.as_deref().unwrap_or_default())?;
                let name = ServerName::try_from(c.host.clone()).map_err(std::io::Error::other)?;
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let s = TlsConnector::from(Arc::new(tls)).connect(name, s).await?;
                Ok(Conn::Tls(Box::new(s)))
            }
        }
    }

    /// Whether the server closed the connection (a server that stopped sends FIN or
    /// close_notify): checked before each write, since a write into a half-closed TCP
    /// connection succeeds and the line would be lost.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let r = match self {
            Conn::Udp(_) => return false,
            Conn::Tcp(s) => s.read(&mut buf).now_or_never(),
            Conn::Tls(s) => s.read(&mut buf).now_or_never(),
        };
        // Pending: nothing to read, still open. Data: ignored (syslog servers send none).
        matches!(r, Some(Ok(0)) | Some(Err(_)))
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Udp(s) => s.send(bytes).await.map(|_| ()),
            Conn::Tcp(s) => s.write_all(bytes).await,
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

/// rustls with the aws-lc-rs provider (already in the agent for the API client), trusting only
/// the CAs of `spec.alerts.syslog.caSecret`.
fn tls_config(ca_pem: &[u8]) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    if roots.is_empty() {
        return Err(std::io::Error::other("no CA certificate in the CA secret"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Writes one line, unless the server has closed the connection.
async fn write_event(
    conn: &mut Conn,
    c: &Config,
    origin: &Origin,
    e: &Event,
) -> std::io::Result<()> {
    if conn.closed() {
        return Err(std::io::Error::other("closed by the server"));
    }
    let bytes = format::frame(&format::line(c.format, origin, e), c.framing());
    match tokio::time::timeout(IO_TIMEOUT, conn.write(&bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("write timed out")),
    }
}

async fn send_loop(
    mut rx: mpsc::Receiver<Event>,
    mut config: watch::Receiver<Option<Config>>,
    origin: Origin,
    id: Identity,
    unreported: Arc<AtomicU64>,
    metrics: SyslogMetrics,
) {
    let mut pending: Option<Event> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(c) = config.borrow_and_update().clone() else {
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut conn = match tokio::time::timeout(IO_TIMEOUT, Conn::open(&c)).await {
            Ok(Ok(conn)) => conn,
            failed => {
                let e = failed.map_or_else(
                    |_| "timed out".to_owned(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                metrics.errors.inc();
                tracing::warn!(host = %c.host, port = c.port, "syslog: cannot connect (retrying in {backoff:?}): {e}");
                // A new configuration cuts the wait short.
                let _ = tokio::time::timeout(backoff, config.changed()).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(host = %c.host, port = c.port, transport = ?c.transport, "syslog: connected");
        // Said first, so the gap is visible where the lines would have been.
        let n = unreported.swap(0, Ordering::SeqCst);
        if n > 0 {
            let e = dropped(n, &id, &c.cluster, Timestamp::now());
            if write_event(&mut conn, &c, &origin, &e).await.is_ok() {
                metrics.sent.with_label_values(&[e.kind.code()]).inc();
            } else {
                unreported.fetch_add(n, Ordering::SeqCst);
                metrics.errors.inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        loop {
            let e = match pending.take() {
                Some(e) => e,
                None => tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => {
                            metrics.queued.dec();
                            e
                        }
                        None => return,
                    },
                    r = config.changed() => {
                        if r.is_err() {
                            return;
                        }
                        break; // reconnect with the new configuration
                    }
                },
            };
            match write_event(&mut conn, &c, &origin, &e).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    metrics.sent.with_label_values(&[e.kind.code()]).inc();
                }
                Err(err) => {
                    metrics.errors.inc();
                    tracing::warn!("syslog: send failed (reconnecting in {backoff:?}): {err}");
                    pending = Some(e);
                    let _ = tokio::time::timeout(backoff, config.changed()).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
    }
}
