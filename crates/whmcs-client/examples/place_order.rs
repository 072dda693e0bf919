//! Places one order for an existing WHMCS client and product, accepts it (the module creates
//! the service), and prints the order and service ids.
//!
//! The variables are the provisioner's; `sf-sandbox --customers 1` prints them for its
//! emulated WHMCS, which holds client 1 and product 1:
//!
//! ```sh
//! WHMCS_API_URL=... WHMCS_API_IDENTIFIER=... WHMCS_API_SECRET=... \
//!     cargo run -p whmcs-client --example place_order -- 1 1
//! ```

// An example program reports on stdout, and its error on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use secrecy::SecretString;
use whmcs_client::{
    AcceptOrderRequest, HttpWhmcsClient, NewOrder, OrderLine, WhmcsApi as _, WhmcsConfig,
};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn arg(n: usize, what: &str) -> Result<u64, String> {
    let text = std::env::args()
        .nth(n)
        .ok_or_else(|| format!("usage: place_order <client id> <product id> ({what} missing)"))?;
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a number"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("place_order: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (client_id, product_id) = (arg(1, "client id")?, arg(2, "product id")?);
    let whmcs = HttpWhmcsClient::new(WhmcsConfig::new(
        var("WHMCS_API_URL")?,
        SecretString::from(var("WHMCS_API_IDENTIFIER")?),
        SecretString::from(var("WHMCS_API_SECRET")?),
    ))?;
    if !whmcs.get_client_details(client_id).await?.is_active() {
        return Err(format!("client {client_id} is not Active").into());
    }
    let mut order = NewOrder::new(client_id, vec![OrderLine::new(product_id, "monthly")]);
    order.no_email = true;
    let placed = whmcs.add_order(&order).await?;
    whmcs
        .accept_order(&AcceptOrderRequest::provision(placed.order_id, false))
        .await?;
    println!(
        "order {} accepted; services {:?}",
        placed.order_id, placed.service_ids
    );
    Ok(())
}
