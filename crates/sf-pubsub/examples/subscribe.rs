//! Subscribes to `/event/OrderProvisionRequested__e` from the earliest retained event and
//! prints the first N decoded events (default 1), then stops.
//!
//! The variables are the provisioner's; `sf-sandbox --customers 1 --orders-per-customer 2
//! --publish` prints them for its emulated org and publishes one event per Order:
//!
//! ```sh
//! SF_LOGIN_URL=... SF_CLIENT_ID=... SF_USERNAME=... SF_PRIVATE_KEY_FILE=key.pem \
//!     SF_PUBSUB_ENDPOINT=... cargo run -p sf-pubsub --example subscribe -- 2
//! ```

// An example program reports on stdout, and its error on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use sf_auth::{JwtBearer, JwtBearerConfig};
use sf_pubsub::{
    ClientConfig, DEFAULT_TOPIC, Message, OrderProvisionRequested, PubSubClient, ReplayStart,
    SubscribeConfig,
};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subscribe: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let wanted: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| format!("{n:?} is not a count"))?,
        None => 1,
    };
    let login = JwtBearerConfig::from_vars(|name| std::env::var(name).ok())?;
    let client = PubSubClient::new(
        ClientConfig::new(var("SF_PUBSUB_ENDPOINT")?),
        Arc::new(JwtBearer::new(login)?),
    )?;
    let mut events = client.subscribe::<OrderProvisionRequested>(
        SubscribeConfig::new(DEFAULT_TOPIC).start(ReplayStart::Earliest),
    );
    let mut seen = 0;
    while seen < wanted {
        let Some(message) = events.next().await else {
            break;
        };
        if let Message::Event(event) = message? {
            seen += 1;
            match event.record {
                Ok(order) => println!(
                    "event {}: Order {} of customer {} approved",
                    event.event_id, order.order_id, order.customer_number
                ),
                // A real subscriber dead-letters it and goes on.
                Err(e) => println!("event {}: undecodable: {e}", event.event_id),
            }
        }
    }
    println!("{seen} events");
    Ok(())
}
