//! Child processes for the binaries' tests: output captured in memory, signals, free ports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::time::timeout;

/// The command contract: a stopped process exits within this bound ([`Captured::terminate`]).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// Bound on anything that should happen "soon"; reached only when something hangs.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends `signal` (a `kill` name: `TERM`, `KILL`, ...) to the child.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Sends SIGTERM to the child.
pub fn sigterm(child: &tokio::process::Child) {
    signal(child, "TERM");
}

/// Sends SIGSTOP to the child: it is paused (no thread runs, its sockets stay open) until
/// [`sigcont`], as a process descheduled or a VM frozen would be.
pub fn sigstop(child: &tokio::process::Child) {
    signal(child, "STOP");
}

/// Sends SIGCONT to the child: a paused child runs on, its timers all late at once.
pub fn sigcont(child: &tokio::process::Child) {
    signal(child, "CONT");
}

/// Sends SIGKILL to the child and reaps it.
pub async fn sigkill(child: &mut tokio::process::Child) {
    signal(child, "KILL");
    timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("a SIGKILLed child is reaped within 10 s")
        .unwrap();
}

/// A child whose stdout and stderr are read to the end into memory (so it never blocks on a
/// full pipe, and every byte it writes can be searched afterwards).
pub struct Captured {
    name: String,
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Captured {
    /// Takes over `child`, spawned with stdout and stderr piped; `name` labels its panics.
    pub fn new(name: impl Into<String>, mut child: tokio::process::Child) -> Self {
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("stdout piped"), Arc::clone(&out)),
            drain(child.stderr.take().expect("stderr piped"), Arc::clone(&err)),
        ];
        Captured {
            name: name.into(),
            child,
            out,
            err,
            readers,
        }
    }

    /// The child process.
    pub fn child(&self) -> &tokio::process::Child {
        &self.child
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Every byte written so far, stdout then stderr.
    pub fn bytes(&self) -> Vec<u8> {
        let mut all = self.out.lock().unwrap().clone();
        all.extend_from_slice(&self.err.lock().unwrap());
        all
    }

    /// The last few thousand characters of stderr, for panic messages.
    pub fn tail(&self) -> String {
        let err = self.stderr();
        let start = err.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
        format!("--- {} stderr (tail) ---\n{}", self.name, &err[start..])
    }

    /// SIGTERM, then the exit code; panics unless it exits within [`SHUTDOWN_BOUND`].
    pub async fn terminate(&mut self) -> Option<i32> {
        sigterm(&self.child);
        self.wait_exit(SHUTDOWN_BOUND).await
    }

    /// Waits for the exit (and for the pipes to be read to the end); panics after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let status = match timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.tail()
            ),
        };
        for reader in self.readers.drain(..) {
            timeout(PATIENCE, reader)
                .await
                .expect("the pipes close after exit")
                .unwrap();
        }
        status.code()
    }
}

fn drain(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}
