//! Every `tracing` event of a test, at TRACE, as text: for tests that search the logs for
//! secrets that must not be there (and for the events that must).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `tracing` writer that appends to a shared buffer; clones share it.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Records every event of the current thread, at TRACE and without colours, until the
    /// returned guard is dropped (`tracing::subscriber::set_default`).
    pub fn trace() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Everything written so far (panics if it is not UTF-8: the formatter only writes text).
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("captured logs are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_every_level_are_captured() {
        let (capture, guard) = LogCapture::trace();
        tracing::trace!(field = "x", "a trace event");
        drop(guard);
        tracing::info!("after the guard");
        let text = capture.text();
        assert!(text.contains("a trace event"), "{text}");
        assert!(text.contains("field=\"x\""), "{text}");
        assert!(!text.contains("after the guard"), "{text}");
    }
}
