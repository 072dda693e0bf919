//! `provisioner demo` as a user runs it: from the portal's `POST /v1/orders` through the
//! approval to WHMCS and the status route, exit 0, with each promise it prints checked here
//! against its own output.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::provisioner_within;

/// `provisioner demo <args>` with an empty environment, to its end: exit code and output.
/// A faulty run retries for seconds; on a loaded machine give it minutes.
async fn demo(args: &[&str]) -> (i32, String) {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    provisioner_within(&all, &BTreeMap::new(), Duration::from_secs(300)).await
}

/// The summary lines of a demo run of `orders` orders that ended well.
fn assert_whole_path(out: &str, orders: usize) {
    for line in [
        format!("{orders} orders for "),
        "placed through POST /v1/orders, approved and provisioned".to_owned(),
        format!("{orders} Salesforce Orders (one per request: yes)"),
        format!("{orders} WHMCS orders (one per Salesforce Order: yes)"),
        format!(
            "sealed in {orders}/{orders} Salesforce OrderItems, in clear in {orders}/{orders} WHMCS services"
        ),
        "audit verify: ok".to_owned(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    // Every row: waiting for review before the approval, provisioned after it.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('│') && l.contains("CUST-"))
        .collect();
    assert_eq!(rows.len(), orders, "{out}");
    for row in rows {
        for cell in ["201 ", "pending_review", "Activated", "provisioned"] {
            assert!(row.contains(cell), "row without {cell:?}: {row}");
        }
    }
    // The sensitive option never shows.
    assert!(!out.contains("demo-root-password"), "{out}");
}

#[tokio::test]
async fn the_demo_runs_from_the_portal_to_whmcs_and_back() {
    let (code, out) = demo(&["--orders", "6"]).await;
    assert_eq!(code, 0, "{out}");
    assert_whole_path(&out, 6);
}

#[tokio::test]
async fn with_faults_every_order_still_exists_once_and_ends_provisioned() {
    let (code, out) = demo(&["--orders", "10", "--faults"]).await;
    assert_eq!(code, 0, "{out}");
    assert_whole_path(&out, 10);
    assert!(out.contains("(faults injected)"), "{out}");
}
