//! Logs in with the OAuth 2.0 JWT bearer flow and prints the org and instance it got (never
//! the token).
//!
//! The variables are the provisioner's; `sf-sandbox` prints them for its emulated org:
//!
//! ```sh
//! SF_LOGIN_URL=... SF_CLIENT_ID=... SF_USERNAME=... SF_PRIVATE_KEY_FILE=key.pem \
//!     cargo run -p sf-auth --example login
//! ```
//!
//! `SF_AUDIENCE` is optional (default: the login URL).

// An example program reports on stdout, and its error on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use sf_auth::{JwtBearer, JwtBearerConfig, TokenSource as _};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("login: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = JwtBearerConfig::from_vars(|name| std::env::var(name).ok())?;
    let tokens = JwtBearer::new(config)?;
    let token = tokens.token().await?;
    println!("logged in: org {} at {}", token.org_id, token.instance_url);
    Ok(())
}
