//! Tamper-evident audit log. In progress.
