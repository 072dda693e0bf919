//! Field-level encryption. In progress.
