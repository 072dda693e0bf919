//! Span export over OTLP/gRPC, only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! The batch span processor is the SDK's async-runtime one: its export loop is a task on the
//! service's tokio runtime, where the tonic exporter runs. [`layer`] must therefore be called
//! inside that runtime (under `Runtime::enter`), and [`Exporting::shutdown`] from a thread that
//! does not run the runtime's tasks (a blocking thread awaited from inside it, as `main` does):
//! it waits for the last batch, which that task sends.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt as _, Targets};

/// A layer of the process's subscriber.
pub(crate) type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Crates whose info-level spans are exported, whatever `RUST_LOG` says about the logs.
const EXPORTED_TARGETS: [&str; 10] = [
    "provisioner",
    "provisioner_core",
    "provisioner_store",
    "provisioner_audit",
    "sf_rest",
    "sf_auth",
    "sf_pubsub",
    "whmcs_client",
    "status_api",
    "security",
];

/// The running exporter: shut it down at the end so the last spans are sent.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Exporting {
    /// Where the spans go, for the start-up log line (without any `user:password@`).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends the spans still queued and stops the exporter. Blocks until then: call it from a
    /// thread that does not run the runtime's tasks (see the module docs).
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter shutdown failed; some spans may be lost");
        }
    }
}

/// The OpenTelemetry layer and its exporter when `endpoint` is set; `Ok(None)` (no exporter, no
/// layer) when it is not. Only spans (no log events: their fields are not vetted for export)
/// at info or above of the workspace crates go through the layer's own filter.
pub(crate) fn layer(
    endpoint: Option<&str>,
    service_name: &str,
) -> anyhow::Result<Option<(BoxedLayer, Exporting)>> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("OTEL_EXPORTER_OTLP_ENDPOINT: cannot set up the OTLP exporter")?;
    // Batch settings from the standard OTEL_BSP_* variables (the builder's default).
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("provisioner");
    let filter = EXPORTED_TARGETS
        .iter()
        .fold(Targets::new(), |t, target| {
            t.with_target(*target, tracing::Level::INFO)
        })
        .and(tracing_subscriber::filter::filter_fn(|meta| meta.is_span()));
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_filter(filter)
        .boxed();
    Ok(Some((
        layer,
        Exporting {
            provider,
            endpoint: without_userinfo(endpoint),
        },
    )))
}

/// `endpoint` without a `user:password@` part.
fn without_userinfo(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{tail}")
        }
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn no_endpoint_no_layer() {
        // No runtime is needed: without the variable nothing is built.
        let built = layer(None, "provisioner").unwrap();
        assert!(built.is_none());
    }

    #[test]
    fn an_endpoint_builds_a_layer_inside_the_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let guard = runtime.enter();
        let (_layer, exporting) = layer(Some("http://127.0.0.1:9"), "svc").unwrap().unwrap();
        drop(guard);
        assert_eq!(exporting.endpoint(), "http://127.0.0.1:9");
        // Nothing queued: the shutdown returns (the collector is never reached).
        exporting.shutdown();
    }

    #[test]
    fn userinfo_is_not_shown() {
        assert_eq!(
            without_userinfo("https://user:pw@collector:4317/x"),
            "https://collector:4317/x"
        );
        assert_eq!(without_userinfo("http://c:4317"), "http://c:4317");
    }
}
