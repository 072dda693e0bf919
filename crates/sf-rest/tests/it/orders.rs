//! Fetch + update round trip, picklist errors, not found, id validation, the reconcile list.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sandbox::salesforce::{Route, SalesforceConfig, SfOrder, salesforce_id};
use secrecy::ExposeSecret;
use serde_json::json;
use sf_rest::{ApiUsage, Error, ErrorClass, OrderApi, OrderUpdate};

use crate::support::{ROOT_PASSWORD, world, world_with};

#[tokio::test]
async fn fetch_and_update_round_trip() {
    let w = world().await;
    let order = w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(order.id.as_str(), w.order_id);
    assert_eq!(order.status.as_deref(), Some("Approved"));
    assert_eq!(order.order_number.as_deref(), Some("00000123"));
    assert_eq!(order.customer_number.as_deref(), Some("C-1001"));
    assert_eq!(order.whmcs_client_id.as_deref(), Some("12"));
    assert_eq!(order.items.len(), 2);
    let first = &order.items[0];
    assert_eq!(first.quantity, 2);
    assert_eq!(first.whmcs_product_id.as_deref(), Some("5"));
    assert_eq!(first.billing_cycle.as_deref(), Some("monthly"));
    assert!(first.config_options.is_none());
    let second = &order.items[1];
    assert_eq!(second.quantity, 1);
    assert_eq!(second.whmcs_product_id.as_deref(), Some("6"));
    let options: serde_json::Value =
        serde_json::from_str(second.config_options.as_ref().unwrap().expose_secret()).unwrap();
    assert_eq!(options, json!({ "12": ROOT_PASSWORD, "13": 2 }));

    let provisioned_at = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap();
    let update = OrderUpdate {
        status: Some("Activated".into()),
        whmcs_order_id: Some("9001".into()),
        whmcs_service_ids: Some(vec!["301".into(), "302".into(), "303".into()]),
        provisioned_at: Some(provisioned_at),
        provisioning_error: None,
        deadline: None,
    };
    w.api.update_order(&w.order_id, &update).await.unwrap();

    let patches = w.sf.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].status, 204);
    assert_eq!(patches[0].order_id, w.order_id);
    assert_eq!(
        patches[0].body,
        json!({
            "Status": "Activated",
            "WHMCS_Order_Id__c": "9001",
            "WHMCS_Service_Ids__c": "301,302,303",
            "Provisioned_At__c": "2026-01-01T00:00:00.000Z",
        })
    );
    let stored = w.sf.order(&w.order_id).unwrap();
    assert_eq!(stored.status, "Activated");
    assert_eq!(stored.whmcs_order_id.as_deref(), Some("9001"));
    assert_eq!(stored.provisioned_at, Some(provisioned_at));

    // Read back through the client.
    let again = w.api.fetch_order(&w.order_id[..15]).await.unwrap();
    assert_eq!(again.status.as_deref(), Some("Activated"));

    // Sforce-Limit-Info was read: three REST calls so far.
    assert_eq!(
        w.api.api_usage(),
        Some(ApiUsage {
            used: 3,
            limit: 15_000
        })
    );
}

#[tokio::test]
async fn a_bad_picklist_value_is_a_permanent_error_and_not_retried() {
    let w = world().await;
    let update = OrderUpdate {
        status: Some("Shipped Yesterday".into()),
        ..OrderUpdate::default()
    };
    let err = w.api.update_order(&w.order_id, &update).await.unwrap_err();
    match &err {
        Error::Api {
            status,
            code,
            fields,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
            assert_eq!(fields, &vec!["Status".to_owned()]);
            assert!(message.contains("bad value for restricted picklist field"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(w.sf.requests(Route::Patch), 1);
    assert_eq!(w.sf.order(&w.order_id).unwrap().status, "Approved");
    assert_eq!(w.sf.patches()[0].status, 400);
}

/// The validation rules the Salesforce setup installs (the sandbox's default): `Provisioning`
/// only from `Approved` or `Provisioning Failed`, `Provisioning Failed` only from `Approved`
/// or `Provisioning`, either kept as it is. A withdrawal that lands
/// between the provisioner's check and its PATCH refuses the PATCH instead of being
/// overwritten.
#[tokio::test]
async fn the_provisioning_and_failed_statuses_are_reached_only_from_where_rules_allow() {
    let w = world().await;
    let provisioning = OrderUpdate {
        status: Some("Provisioning".into()),
        ..OrderUpdate::default()
    };
    // From the approved status; kept as it is (our own work resumed); from Draft (a withdrawal
    // after the check): refused, not overwritten; from the failed status (an operator's retry
    // of a failed Order): passes.
    for (before, passes) in [
        ("Approved", true),
        ("Provisioning", true),
        ("Draft", false),
        ("Provisioning Failed", true),
    ] {
        w.sf.set_order_status(&w.order_id, before).unwrap();
        let result = w.api.update_order(&w.order_id, &provisioning).await;
        let after = w.sf.order(&w.order_id).unwrap().status;
        if passes {
            result.unwrap();
            assert_eq!(after, "Provisioning", "from {before}");
        } else {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::Api { status: 400, code, .. } if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
                "{err:?}"
            );
            assert_eq!(err.class(), ErrorClass::Permanent);
            assert_eq!(after, before, "not overwritten");
        }
    }
    let codes: Vec<u16> = w.sf.patches().iter().map(|p| p.status).collect();
    assert_eq!(codes, [204, 204, 400, 204]);

    // The failed status the same way: from the approved or provisioning status only, never
    // over a withdrawal or `Activated`.
    let failed = OrderUpdate {
        status: Some("Provisioning Failed".into()),
        provisioning_error: Some("invalid product".into()),
        ..OrderUpdate::default()
    };
    for (before, passes) in [
        ("Approved", true),
        ("Provisioning", true),
        ("Draft", false),
        ("Activated", false),
    ] {
        w.sf.set_order_status(&w.order_id, before).unwrap();
        let result = w.api.update_order(&w.order_id, &failed).await;
        let after = w.sf.order(&w.order_id).unwrap().status;
        assert_eq!(result.is_ok(), passes, "from {before}: {result:?}");
        let expected = if passes {
            "Provisioning Failed"
        } else {
            before
        };
        assert_eq!(after, expected, "from {before}");
    }
}

#[tokio::test]
async fn missing_orders_are_not_found() {
    let w = world().await;
    let ghost = salesforce_id("801", 999_999);
    let err = w.api.fetch_order(&ghost).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let update = OrderUpdate {
        status: Some("Activated".into()),
        ..OrderUpdate::default()
    };
    let err = w.api.update_order(&ghost, &update).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_malicious_id_is_rejected_before_any_request() {
    let w = world().await;
    for bad in [
        "x' OR Id != '",
        "801000000000001' OR Id != '",
        "",
        "801%27000000000",
    ] {
        let err = w.api.fetch_order(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{bad:?}: {err:?}");
        assert_eq!(err.class(), ErrorClass::Permanent);
        let update = OrderUpdate {
            status: Some("Activated".into()),
            ..OrderUpdate::default()
        };
        let err = w.api.update_order(bad, &update).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{bad:?}: {err:?}");
    }
    // Not even a token was requested.
    assert_eq!(w.sf.total_requests(), 0);
    assert_eq!(w.tokens.token_requests(), 0);
}

#[tokio::test]
async fn reconcile_lists_old_approved_orders_across_pages() {
    let w = world_with(SalesforceConfig {
        query_page_size: 2,
        ..SalesforceConfig::trusting(test_support::keys::PUBLIC_KEY_PEM)
    })
    .await;
    let now = Utc::now();
    let mut want = Vec::new();
    for n in 0..5u64 {
        let id = salesforce_id("801", 100 + n);
        let mut order = SfOrder::new(id.clone(), "Approved");
        order.customer_number = Some(format!("C-{n}"));
        order.last_modified = now - chrono::Duration::hours(10 - n as i64);
        w.sf.insert_order(order);
        want.push(id);
    }
    let mut recent = SfOrder::new(salesforce_id("801", 200), "Approved");
    recent.last_modified = now;
    w.sf.insert_order(recent);
    let mut activated = SfOrder::new(salesforce_id("801", 201), "Activated");
    activated.last_modified = now - chrono::Duration::hours(20);
    w.sf.insert_order(activated);

    let found = w
        .api
        .list_approved_orders(Duration::from_secs(60 * 60))
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(found[0].customer_number.as_deref(), Some("C-0"));
    let first_seen = found[0].last_modified.unwrap();
    assert!(
        (first_seen - (now - chrono::Duration::hours(10)))
            .num_seconds()
            .abs()
            <= 1
    );
    // 5 records at 2 per page: 3 requests.
    assert_eq!(w.sf.requests(Route::Query), 3);
}

#[tokio::test]
async fn the_sweep_lists_old_orders_in_another_status_with_the_same_query() {
    let w = world().await;
    let now = Utc::now();
    let mut provisioning = SfOrder::new(salesforce_id("801", 300), "Provisioning");
    provisioning.customer_number = Some("C-9".into());
    provisioning.last_modified = now - chrono::Duration::hours(3);
    w.sf.insert_order(provisioning);
    let mut recent = SfOrder::new(salesforce_id("801", 301), "Provisioning");
    recent.last_modified = now;
    w.sf.insert_order(recent);
    let mut approved = SfOrder::new(salesforce_id("801", 302), "Approved");
    approved.last_modified = now - chrono::Duration::hours(3);
    w.sf.insert_order(approved);

    let found = w
        .api
        .list_orders_in_status("Provisioning", Duration::from_secs(60 * 60))
        .await
        .unwrap();
    let ids: Vec<&str> = found.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, [salesforce_id("801", 300).as_str()]);
    assert_eq!(found[0].customer_number.as_deref(), Some("C-9"));
    // A status literal is quoted like any other: nothing of it reaches the query unescaped.
    let none = w
        .api
        .list_orders_in_status("Provisioning' OR Status != '", Duration::ZERO)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}
