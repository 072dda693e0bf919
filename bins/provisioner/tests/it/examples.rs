//! The library crates' `examples/` programs, as a developer runs them: each against a running
//! `sf-sandbox` process, configured only by the variables the sandbox prints.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use test_support::sf_sandbox::SfSandbox;

use crate::processes::{cargo_build, sf_sandbox_bin};
use crate::support::BIN;

/// Bound on one example's run, and on the sandbox's start.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs the example `name` with `args` and exactly `env` (plus PATH): its exit code and stdout
/// with stderr.
async fn example(
    name: &str,
    args: &[&str],
    env: &std::collections::BTreeMap<String, String>,
) -> (Option<i32>, String) {
    let path = Path::new(BIN)
        .parent()
        .expect("a profile directory")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let run = tokio::process::Command::new(&path)
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap_or_else(|_| panic!("example {name} ran longer than {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("example {name} ({}): {e}", path.display()));
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_example_runs_against_sf_sandbox() {
    // Every package's examples, with the workspace's features (what a workspace build has
    // compiled already: only the examples are built and linked here).
    cargo_build(&["--workspace", "--examples"]).await;
    let sandbox = SfSandbox::start(
        &sf_sandbox_bin().await,
        &[
            "--customers",
            "1",
            "--orders-per-customer",
            "2",
            "--publish",
        ],
        PATIENCE,
    )
    .await;
    let env = sandbox.env.clone();
    // The reconcile query compares `LastModifiedDate` with a cutoff in whole seconds: Orders
    // seeded less than a second ago are not listed yet. A second after the announcement,
    // every seeded Order is.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, args, expected) in [
        ("login", &[][..], "logged in: org "),
        ("approved_orders", &[][..], "2 approved Orders"),
        ("subscribe", &["2"][..], "2 events"),
        (
            "place_order",
            &["1", "1"][..],
            "order 1 accepted; services [1]",
        ),
    ] {
        let (code, out) = example(name, args, &env).await;
        assert_eq!(code, Some(0), "example {name}:\n{out}");
        assert!(
            out.contains(expected),
            "example {name}: no {expected:?} in\n{out}"
        );
    }
    // Without the variables an example says which one is missing.
    let (code, out) = example("login", &[], &Default::default()).await;
    assert_ne!(code, Some(0));
    assert!(
        out.contains("login: invalid salesforce auth configuration: SF_LOGIN_URL: not set"),
        "{out}"
    );
    sandbox.terminate().await;
}
