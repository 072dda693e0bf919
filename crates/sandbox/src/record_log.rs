//! A bounded in-memory log of what a sandbox received, for tests to inspect.
//!
//! Recording is on by default and keeps the most recent [`DEFAULT_RECORD_LIMIT`] entries, so a
//! long-running sandbox (a backlog benchmark draining 100,000 Orders) stays bounded in memory;
//! recording can also be switched off entirely.

use std::collections::VecDeque;

/// How many entries a log keeps by default; older ones are dropped first.
pub const DEFAULT_RECORD_LIMIT: usize = 100_000;

/// The most recent entries, up to a limit.
#[derive(Debug, Clone)]
pub(crate) struct RecordLog<T> {
    entries: VecDeque<T>,
    limit: usize,
    enabled: bool,
}

impl<T> Default for RecordLog<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            limit: DEFAULT_RECORD_LIMIT,
            enabled: true,
        }
    }
}

impl<T: Clone> RecordLog<T> {
    /// Whether new entries are kept.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled && self.limit > 0
    }

    /// Appends `entry` (dropping the oldest beyond the limit); a no-op when disabled.
    pub(crate) fn push(&mut self, entry: T) {
        if !self.enabled() {
            return;
        }
        self.entries.push_back(entry);
        self.trim();
    }

    /// Turns recording on or off; what was recorded stays.
    pub(crate) fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Keeps at most `limit` entries from now on (drops the oldest right away).
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        self.trim();
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entries, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter()
    }

    /// A copy of the entries, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.entries.iter().cloned().collect()
    }

    fn trim(&mut self) {
        while self.entries.len() > self.limit {
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_entries_up_to_the_limit() {
        let mut log = RecordLog::default();
        log.set_limit(3);
        for n in 0..5 {
            log.push(n);
        }
        assert_eq!(log.to_vec(), vec![2, 3, 4]);
        log.set_limit(2);
        assert_eq!(log.to_vec(), vec![3, 4]);
        log.set_enabled(false);
        log.push(9);
        assert_eq!(log.to_vec(), vec![3, 4], "disabled logs keep what they had");
        log.set_enabled(true);
        log.push(10);
        assert_eq!(log.iter().copied().collect::<Vec<_>>(), vec![4, 10]);
        log.set_limit(0);
        assert!(!log.enabled());
        assert!(log.to_vec().is_empty());
        log.clear();
    }

    #[test]
    fn records_by_default() {
        let mut log = RecordLog::default();
        assert!(log.enabled());
        log.push("a");
        assert_eq!(log.to_vec(), vec!["a"]);
    }
}
