//! Lists the Approved Orders of the org (the reconcile sweep's query) with their items, as the
//! provisioner reads them.
//!
//! The variables are the provisioner's; `sf-sandbox --customers 2 --orders-per-customer 2`
//! prints them for its emulated org:
//!
//! ```sh
//! SF_LOGIN_URL=... SF_CLIENT_ID=... SF_USERNAME=... SF_PRIVATE_KEY_FILE=key.pem \
//!     cargo run -p sf-rest --example approved_orders
//! ```

// An example program reports on stdout, and its error on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use sf_auth::{JwtBearer, JwtBearerConfig};
use sf_rest::{OrderApi as _, RestConfig, RestOrderApi};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("approved_orders: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let login = JwtBearerConfig::from_vars(|name| std::env::var(name).ok())?;
    let rest = RestOrderApi::new(Arc::new(JwtBearer::new(login)?), RestConfig::default())?;

    let approved = rest.list_approved_orders(Duration::ZERO).await?;
    println!("{} approved Orders", approved.len());
    for listed in approved {
        let order = rest.fetch_order(listed.id.as_str()).await?;
        println!(
            "{} {} customer {} items {}",
            listed.id.as_str(),
            order.status.as_deref().unwrap_or("-"),
            order.customer_number.as_deref().unwrap_or("-"),
            order.items.len()
        );
    }
    Ok(())
}
