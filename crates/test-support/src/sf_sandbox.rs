//! The `sf-sandbox` binary as a child process: started with an empty environment, its
//! announcement (`KEY=value` lines, then `# ready`) read from stdout, and clients made only
//! from what it printed.
//!
//! [`SfSandbox::start`] hands the sandbox the fixed test key ([`crate::keys`]) with
//! `--private-key-file`, so a test does not pay for RSA key generation;
//! [`SfSandbox::start_generating_key`] lets it generate its own, as it does for a developer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sf_auth::{JwtBearer, JwtBearerConfig};
use tokio::time::Instant;

use crate::process::Captured;

/// The line that ends the announcement.
pub const READY: &str = "# ready";

/// A running `sf-sandbox` process and the environment it printed.
pub struct SfSandbox {
    /// The process, its output captured.
    pub proc: Captured,
    /// The announcement, line by line, [`READY`] last.
    pub lines: Vec<String>,
    /// The announced variables, unquoted.
    pub env: BTreeMap<String, String>,
    /// The test key's file given with `--private-key-file`, removed when dropped.
    _key_file: Option<tempfile::TempPath>,
}

impl SfSandbox {
    /// Starts `bin --private-key-file <the test key> <args>` with an empty environment
    /// (`RUST_LOG=info` only) and reads its announcement; panics if none comes within `limit`.
    /// The sandbox trusts [`crate::keys::PUBLIC_KEY_PEM`] and prints the key file's path as
    /// `SF_PRIVATE_KEY_FILE`.
    pub async fn start(bin: &Path, args: &[&str], limit: Duration) -> Self {
        let mut file = tempfile::Builder::new()
            .prefix("sf-sandbox-test-key-")
            .suffix(".pem")
            .tempfile()
            .unwrap();
        std::io::Write::write_all(&mut file, crate::keys::PRIVATE_KEY_PEM.as_bytes()).unwrap();
        let key_file = file.into_temp_path();
        let key_path = key_file.to_str().unwrap().to_owned();
        let mut all = vec!["--private-key-file", key_path.as_str()];
        all.extend_from_slice(args);
        let mut sandbox = Self::launch(bin, &all, limit).await;
        sandbox._key_file = Some(key_file);
        sandbox
    }

    /// Like [`SfSandbox::start`], but the sandbox generates its key pair (and removes the
    /// key file it wrote when it exits).
    pub async fn start_generating_key(bin: &Path, args: &[&str], limit: Duration) -> Self {
        Self::launch(bin, args, limit).await
    }

    async fn launch(bin: &Path, args: &[&str], limit: Duration) -> Self {
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let proc = Captured::new("sf-sandbox", child);
        let deadline = Instant::now() + limit;
        let lines: Vec<String> = loop {
            let out = proc.stdout();
            let lines: Vec<&str> = out.split_inclusive('\n').collect();
            if let Some(end) = lines.iter().position(|l| *l == format!("{READY}\n")) {
                break lines[..=end]
                    .iter()
                    .map(|l| l.trim_end_matches('\n').to_owned())
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "sf-sandbox printed no `{READY}` line\n{out}\n{}",
                proc.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let env = lines[..lines.len() - 1]
            .iter()
            .map(|line| {
                let (k, v) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not a KEY=value line: {line:?}"));
                (k.to_owned(), unquote(v))
            })
            .collect();
        SfSandbox {
            proc,
            lines,
            env,
            _key_file: None,
        }
    }

    /// The value printed for `key`; panics if there is none.
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("sf-sandbox printed no {key}: {:?}", self.lines))
    }

    /// A JWT bearer token source made only from the printed variables (the key file, login
    /// URL, client id, user and audience).
    pub fn tokens(&self) -> Arc<JwtBearer> {
        let pem = std::fs::read_to_string(self.var("SF_PRIVATE_KEY_FILE")).unwrap();
        let mut config = JwtBearerConfig::new(
            self.var("SF_LOGIN_URL"),
            self.var("SF_CLIENT_ID"),
            self.var("SF_USERNAME"),
            SecretString::from(pem),
        );
        config.audience = Some(self.var("SF_AUDIENCE").to_owned());
        Arc::new(JwtBearer::new(config).unwrap())
    }

    /// The printed WHMCS API URL, identifier and secret, for `whmcs_client::WhmcsConfig::new`.
    pub fn whmcs_credentials(&self) -> (String, SecretString, SecretString) {
        (
            self.var("WHMCS_API_URL").to_owned(),
            SecretString::from(self.var("WHMCS_API_IDENTIFIER").to_owned()),
            SecretString::from(self.var("WHMCS_API_SECRET").to_owned()),
        )
    }

    /// SIGTERM, then the exit code (see [`Captured::terminate`]).
    pub async fn terminate(mut self) -> Option<i32> {
        self.proc.terminate().await
    }
}

/// Undoes the single quotes a POSIX shell would undo.
pub fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace(r"'\''", "'"),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quotes_are_undone() {
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(unquote("'a b'"), "a b");
        assert_eq!(unquote(r"'it'\''s'"), "it's");
    }
}
