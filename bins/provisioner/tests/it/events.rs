//! `provisioner events tail` against the in-process sandboxes.

use std::time::Duration;

use sandbox::pubsub::{PubSubConfig, PubSubSandbox, sample_order};
use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox};
use test_support::keys;

const BIN: &str = env!("CARGO_BIN_EXE_provisioner");

async fn sandboxes() -> (SalesforceSandbox, PubSubSandbox) {
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys::PUBLIC_KEY_PEM))
        .await
        .unwrap();
    let checker = sf.token_checker();
    let pubsub = PubSubSandbox::start(
        PubSubConfig::default().token_validator(move |t: &str| checker.is_valid(t)),
    )
    .await
    .unwrap();
    (sf, pubsub)
}

fn command(sf: &SalesforceSandbox, pubsub: &PubSubSandbox) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("SF_PUBSUB_ENDPOINT", pubsub.endpoint())
        .env("SF_LOGIN_URL", sf.base_url())
        .env("SF_CLIENT_ID", &sf.config().client_id)
        .env("SF_USERNAME", &sf.config().usernames[0])
        .env("SF_PRIVATE_KEY", keys::PRIVATE_KEY_PEM)
        .env("SF_PUBSUB_BATCH", "3")
        .kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("provisioner did not finish within 60 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_prints_five_decoded_events_as_json_lines() {
    let (sf, pubsub) = sandboxes().await;
    pubsub.seed_orders(sf_pubsub::DEFAULT_TOPIC, 8).unwrap();
    let out = output(command(&sf, &pubsub).args([
        "events", "tail", "--replay", "EARLIEST", "--count", "5", "--json",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let want = sample_order(i);
        assert_eq!(line["record"]["OrderId__c"], want.order_id.as_str());
        assert_eq!(
            line["record"]["CustomerNumber__c"],
            want.customer_number.as_str()
        );
        assert_eq!(line["record"]["CreatedDate"], want.created_date);
        assert!(line["eventId"].as_str().unwrap().len() == 36);
        assert!(line["error"].is_null());
    }
    assert!(
        sf.token_requests() >= 1,
        "the binary minted a token with the JWT bearer flow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2() {
    let (sf, pubsub) = sandboxes().await;
    let out = output(
        command(&sf, &pubsub)
            .env_remove("SF_CLIENT_ID")
            .args(["events", "tail", "--count", "1"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SF_CLIENT_ID"));

    let out = output(command(&sf, &pubsub).args(["events", "tail", "--replay", "-1"])).await;
    assert_eq!(out.status.code(), Some(2));

    let out = output(
        command(&sf, &pubsub)
            .env("SF_PUBSUB_BATCH", "101")
            .args(["events", "tail"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_exits_1() {
    let (sf, pubsub) = sandboxes().await;
    let out = output(
        command(&sf, &pubsub)
            .env("SF_PROVISION_EVENT_CHANNEL", "/event/Nope__e")
            .args(["events", "tail", "--count", "1"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic.not.found"));
}
