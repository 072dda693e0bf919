//! The environment lines printed for a provisioner, and the optional state file.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The last line of the announcement.
pub(crate) const READY: &str = "# ready";

/// `KEY=value` lines (values shell-quoted when they need it), then [`READY`].
pub(crate) fn render(vars: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    for (key, value) in vars {
        out.push_str(key);
        out.push('=');
        out.push_str(&shell_quote(value));
        out.push('\n');
    }
    out.push_str(READY);
    out.push('\n');
    out
}

/// The value as is when a POSIX shell reads it literally, else in single quotes.
fn shell_quote(value: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("'{}'", value.replace('\'', r"'\''")))
    }
}

/// The state file; removed when dropped (on a clean exit), since its ports die with us.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Writes `contents` to `path` atomically (a sibling temporary file, then a rename).
    pub(crate) fn write(path: &Path, contents: &str) -> anyhow::Result<Self> {
        if path.file_name().is_none() {
            anyhow::bail!("--state-file {} names no file", path.display());
        }
        let mut staging = path.as_os_str().to_owned();
        staging.push(".tmp");
        let staging = PathBuf::from(staging);
        std::fs::write(&staging, contents)
            .with_context(|| format!("writing the state file {}", staging.display()))?;
        std::fs::rename(&staging, path)
            .with_context(|| format!("moving {} to {}", staging.display(), path.display()))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the state file");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn values_are_quoted_only_when_needed() {
        let text = render(&[
            ("SF_LOGIN_URL", "http://127.0.0.1:4000".to_owned()),
            ("SF_PROVISION_EVENT_CHANNEL", "/event/X__e".to_owned()),
            ("WHMCS_API_SECRET", "it's a $ecret".to_owned()),
            ("EMPTY", String::new()),
        ]);
        assert_eq!(
            text,
            "SF_LOGIN_URL=http://127.0.0.1:4000\n\
             SF_PROVISION_EVENT_CHANNEL=/event/X__e\n\
             WHMCS_API_SECRET='it'\\''s a $ecret'\n\
             EMPTY=''\n\
             # ready\n"
        );
    }

    #[test]
    fn the_state_file_is_written_whole_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.env");
        let state = StateFile::write(&path, "A=1\n# ready\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\n# ready\n");
        assert!(!dir.path().join("sandbox.env.tmp").exists());
        drop(state);
        assert!(!path.exists());
    }
}
