//! A TCP relay between one client and the API server that a test can cut and restore: the
//! client then really cannot reach the API server (connections are reset, new ones refused)
//! while everything else in the shared cluster keeps working.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{E2eError, Result};

pub struct Relay {
    /// `https://127.0.0.1:<port>`: the address to give the client.
    pub url: String,
    port: u16,
    upstream: String,
    serving: Option<(JoinHandle<()>, Arc<Notify>)>,
}

impl Relay {
    /// Starts relaying from a free local port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Relay> {
        let port = crate::free_port()?;
        let mut relay = Relay {
            url: format!("https://127.0.0.1:{port}"),
            port,
            upstream: upstream.to_owned(),
            serving: None,
        };
        relay.restore().await?;
        Ok(relay)
    }

    /// Closes the port and every open connection.
    pub fn cut(&mut self) {
        if let Some((task, stop)) = self.serving.take() {
            stop.notify_waiters();
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) -> Result<()> {
        self.cut();
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .map_err(|e| E2eError::Other(format!("relay port {}: {e}", self.port)))?;
        let stop = Arc::new(Notify::new());
        let upstream = self.upstream.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let upstream = upstream.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = stop.notified() => {}
                        }
                    });
                }
            }
        });
        self.serving = Some((task, stop));
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
