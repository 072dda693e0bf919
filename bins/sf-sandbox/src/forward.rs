//! Fixed ports: the sandbox servers bind ephemeral ports only, so a fixed port is a plain TCP
//! forwarder from `127.0.0.1:<port>` to the server's own address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Binds `127.0.0.1:<port>` for `what`, before anything else starts, so a busy port fails fast.
pub(crate) async fn bind(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port} for {what}"))
}

/// A running forwarder; stops (with its connections) when dropped.
#[derive(Debug)]
pub(crate) struct Forwarder {
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards every connection accepted on `listener` to `target`.
    pub(crate) fn spawn(listener: TcpListener, target: SocketAddr) -> Self {
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task ends them too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => {
                            connections.spawn(pipe(inbound, target));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "forwarder accept failed");
                            // Out of file descriptors and the like: don't spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Self { task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr) {
    let _ = inbound.set_nodelay(true);
    match TcpStream::connect(target).await {
        Ok(mut outbound) => {
            let _ = outbound.set_nodelay(true);
            // Either side closing (a sandbox fault that drops the connection included) ends both.
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
        Err(e) => tracing::warn!(%target, error = %e, "forwarder cannot reach the sandbox"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_close_propagates() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
            // Dropping `conn` closes the sandbox side.
        });
        let front = bind(0, "the test").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let forwarder = Forwarder::spawn(front, target);
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HELLO");
        echo.await.unwrap();
        drop(forwarder);
    }

    #[tokio::test]
    async fn a_busy_port_is_reported_with_its_purpose() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind(port, "WHMCS").await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("binding 127.0.0.1:{port} for WHMCS: ")),
            "{err:#}"
        );
    }
}
