//! OpenTelemetry (issue 18): with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `run` exports its job,
//! step and external-call spans over OTLP/gRPC to an in-process collector, carrying no secret
//! or personal data; without it no exporter starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use test_support::process::{Captured, PATIENCE, free_port};

use crate::logs::{assert_no_canary, credential_canaries, encoded_forms, pii_canaries};
use crate::support::{
    CapturedProvisioner as _, PORTAL_TOKEN, ROOT_PASSWORD, World, wait_all_activated, wait_healthy,
};

/// The log line `run` writes once at start when it exports.
const EXPORTING: &str = "exporting traces over OTLP to";

/// An OTLP trace collector on 127.0.0.1: every export request it is sent, as received.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Starts a collector; its endpoint (`http://127.0.0.1:<port>`).
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, endpoint)
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// A span with its resource's `service.name`.
struct Received {
    span: Span,
    service_name: Option<String>,
}

fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<Received> {
    let mut spans = Vec::new();
    for request in requests {
        for resource_spans in &request.resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"));
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push(Received {
                        span: span.clone(),
                        service_name: service_name.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// The value of attribute `key` as text (strings, integers, booleans).
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `span` has an ancestor (through `by_id`) that is a `step` span.
fn under_a_step(span: &Span, by_id: &HashMap<Vec<u8>, &Span>) -> bool {
    let mut parent = span.parent_span_id.clone();
    while let Some(p) = by_id.get(&parent) {
        if p.trace_id != span.trace_id {
            return false;
        }
        if p.name == "step" {
            return true;
        }
        parent = p.parent_span_id.clone();
    }
    false
}

/// `provisioner run` with `env` (status API on `port`) until every seeded Order of `world` is
/// Activated, then a graceful stop that must exit 0: the stopped process, its output kept.
async fn run_to_activation(
    world: &World,
    env: &std::collections::BTreeMap<String, String>,
    port: u16,
) -> Captured {
    let mut provisioner = Captured::provisioner("provisioner", &["run"], env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();
    wait_all_activated(world, PATIENCE).await;
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
    provisioner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_step_and_call_spans_are_exported_over_otlp_without_secrets() {
    let (collector, endpoint) = Collector::start().await;
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
    env.insert("OTEL_SERVICE_NAME".into(), "provisioner-otlp-test".into());
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    env.insert("PORTAL_API_TOKEN".into(), PORTAL_TOKEN.into());
    // The engine's log lines at warn: the exported spans do not depend on RUST_LOG.
    env.insert(
        "RUST_LOG".into(),
        "warn,provisioner=info,provisioner_core=warn".into(),
    );
    // The graceful stop sends the spans still queued.
    let provisioner = run_to_activation(&world, &env, port).await;
    let logs = provisioner.stderr();
    assert!(
        logs.contains(&format!("{EXPORTING} {endpoint}")),
        "{}",
        provisioner.tail()
    );
    assert!(
        !logs.lines().any(
            |l| l.contains("\"level\":\"INFO\"") && l.contains("\"target\":\"provisioner_core")
        ),
        "RUST_LOG=warn still filters the log lines: {}",
        provisioner.tail()
    );

    let requests = collector.requests();
    let spans = flatten(&requests);
    assert!(!spans.is_empty(), "the collector received spans");
    let names: Vec<String> = spans
        .iter()
        .map(|r| {
            let what = attribute(&r.span.attributes, "step")
                .or_else(|| attribute(&r.span.attributes, "action"))
                .unwrap_or_default();
            format!("{} {what}", r.span.name)
        })
        .collect();
    eprintln!(
        "{} spans in {} requests: {names:?}",
        spans.len(),
        requests.len()
    );
    let by_id: HashMap<Vec<u8>, &Span> = spans
        .iter()
        .map(|r| (r.span.span_id.clone(), &r.span))
        .collect();
    for received in &spans {
        assert_eq!(
            received.service_name.as_deref(),
            Some("provisioner-otlp-test"),
            "service.name of span {}",
            received.span.name
        );
    }

    let event = &world.seeded.events[0];
    let jobs: Vec<&Span> = spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| {
            s.name == "job"
                && attribute(&s.attributes, "order_id").as_deref() == Some(&*event.order_id)
        })
        .collect();
    assert!(
        !jobs.is_empty(),
        "a job span names order {}",
        event.order_id
    );
    let steps: Vec<&Span> = spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name == "step")
        .filter(|s| {
            jobs.iter()
                .any(|j| j.span_id == s.parent_span_id && j.trace_id == s.trace_id)
        })
        .collect();
    let step_names: Vec<String> = steps
        .iter()
        .filter_map(|s| attribute(&s.attributes, "step"))
        .collect();
    assert!(
        steps.len() >= 2 && step_names.len() == steps.len(),
        "step spans under the job span, each with its step: {step_names:?}"
    );
    for (name, action) in [
        ("salesforce.rest", "fetch order"),
        ("whmcs.api", "AddOrder"),
    ] {
        let calls: Vec<&Span> = spans
            .iter()
            .map(|r| &r.span)
            .filter(|s| s.name == name && under_a_step(s, &by_id))
            .collect();
        assert!(!calls.is_empty(), "a {name} span under a step span");
        let actions: Vec<String> = calls
            .iter()
            .filter_map(|s| attribute(&s.attributes, "action"))
            .collect();
        assert!(
            actions.iter().any(|a| a == action),
            "{name} actions: {actions:?}"
        );
        assert!(
            calls
                .iter()
                .all(|s| attribute(&s.attributes, "http.response.status_code").is_some()),
            "every {name} span has its HTTP status"
        );
    }

    assert!(
        spans.iter().any(|r| r.span.name == "intake"),
        "the subscriber's intake has its span"
    );

    // No secret or personal data anywhere in what was sent.
    let bytes: Vec<u8> = requests.iter().flat_map(|r| r.encode_to_vec()).collect();
    assert!(
        bytes
            .windows(event.order_id.len())
            .any(|w| w == event.order_id.as_bytes()),
        "the search below looks at the spans' text"
    );
    let mut canaries = credential_canaries(&world);
    canaries.push(("customer number".into(), event.customer_number.clone()));
    for token in world.sf.issued_tokens() {
        canaries.push(("Salesforce access token".into(), token));
    }
    for form in encoded_forms(ROOT_PASSWORD) {
        canaries.push(("root password".into(), form));
    }
    canaries.extend(pii_canaries(1));
    assert_no_canary(&canaries, &[("OTLP export requests", &bytes)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_endpoint_no_exporter_starts() {
    let (collector, _endpoint) = Collector::start().await;
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    // The other OTEL variables alone start nothing.
    env.insert("OTEL_SERVICE_NAME".into(), "provisioner-otlp-test".into());
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    let provisioner = run_to_activation(&world, &env, port).await;
    let logs = provisioner.stderr();
    assert!(
        logs.contains("provisioner_core") || logs.contains(&world.seeded.events[0].order_id),
        "the service logged its work: {}",
        provisioner.tail()
    );
    assert!(!logs.contains(EXPORTING), "{}", provisioner.tail());
    assert!(collector.requests().is_empty());
}

/// A collector that is not there costs the service nothing: it provisions, and a graceful
/// stop (which tries to send the last spans) still ends within the shutdown bound with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absent_collector_does_not_hold_up_the_service() {
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    // Nothing listens there: every export is refused.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    let provisioner = run_to_activation(&world, &env, port).await;
    assert!(
        provisioner
            .stderr()
            .contains(&format!("{EXPORTING} {endpoint}")),
        "{}",
        provisioner.tail()
    );
}
