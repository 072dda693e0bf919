//! Crash and scale-out tests (issue 6): in progress.
