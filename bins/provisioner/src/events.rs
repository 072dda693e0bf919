//! `provisioner events tail`: subscribe and print decoded events.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sf_pubsub::{ClientConfig, GenericRecord, Message, PubSubClient, ReplayStart, SubscribeConfig};

use crate::cli::{Failure, TailArgs};
use crate::config::Config;

pub(crate) async fn tail(sf: &Config, args: TailArgs) -> Result<(), Failure> {
    let usage = Failure::Usage;
    let start: ReplayStart = match &args.replay {
        Some(text) => text
            .parse()
            .map_err(|e: sf_pubsub::Error| usage(anyhow!(e).context("--replay")))?,
        None => sf.replay.clone(),
    };
    let jwt = sf_auth::JwtBearer::new(sf.jwt_config().map_err(usage)?)
        .map_err(|e| usage(anyhow!(e).context("salesforce credentials")))?;
    let mut config = ClientConfig::new(&sf.pubsub_endpoint);
    if let Some(path) = &sf.pubsub_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading SF_PUBSUB_CA_FILE {}", path.display()))
            .map_err(usage)?;
        config = config.with_ca_pem(pem);
    }
    let client = PubSubClient::new(config, Arc::new(jwt))
        .map_err(|e| usage(anyhow!(e).context("SF_PUBSUB_ENDPOINT")))?;
    let mut sub = client.subscribe::<GenericRecord>(
        SubscribeConfig::new(&sf.channel)
            .start(start)
            .batch(sf.pubsub_batch),
    );
    let runtime = |e: anyhow::Error| Failure::Runtime(e);
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|n| seen < n) {
        let message = tokio::select! {
            m = sub.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(message) = message else {
            return Err(runtime(anyhow!("the subscription ended")));
        };
        let message = message
            .map_err(|e| runtime(anyhow!(e).context(format!("subscribing to {}", sf.channel))))?;
        let line = match message {
            Message::Event(event) => {
                seen += 1;
                let (record, error) = match &event.record {
                    Ok(r) => (r.to_json(), None),
                    Err(e) => (serde_json::Value::Null, Some(e.to_string())),
                };
                if args.json {
                    serde_json::json!({
                        "replayId": STANDARD.encode(&event.replay_id),
                        "eventId": event.event_id,
                        "schemaId": event.schema_id,
                        "record": record,
                        "error": error,
                    })
                    .to_string()
                } else {
                    match error {
                        None => format!(
                            "{} {} {}",
                            STANDARD.encode(&event.replay_id),
                            event.event_id,
                            record
                        ),
                        Some(e) => format!(
                            "{} {} undecodable: {e}",
                            STANDARD.encode(&event.replay_id),
                            event.event_id
                        ),
                    }
                }
            }
            Message::Keepalive { latest_replay_id } => {
                tracing::debug!(latest_replay_id = %STANDARD.encode(&latest_replay_id), "keepalive");
                continue;
            }
            Message::ReplayReset {
                error_code,
                rejected,
                fallback,
            } => {
                eprintln!(
                    "provisioner: warning: replay position {rejected} rejected ({error_code}); \
                     restarted from {fallback}, events may have been missed"
                );
                continue;
            }
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(runtime(anyhow!(e).context("writing to stdout")));
        }
    }
    Ok(())
}
