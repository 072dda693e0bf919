//! `RestOrderApi::describe` against the sandbox: the org's fields, typed; removals and edit
//! permissions show; unknown objects and bad names are typed errors; an expired session is
//! renewed once like every other call.

use sandbox::salesforce::Route;
use sf_rest::{Action, Error, ErrorClass, FieldType};

use crate::support::world;

#[tokio::test]
async fn describe_reads_the_order_fields_and_the_status_picklist() {
    let w = world().await;
    let order = w.api.describe("Order").await.unwrap();
    assert_eq!(order.name, "Order");
    assert!(order.queryable && order.updateable);
    let status = order.field("Status").unwrap();
    assert_eq!(status.field_type, FieldType::Picklist);
    let values: Vec<&str> = status
        .picklist_values
        .iter()
        .map(|v| v.value.as_str())
        .collect();
    let configured: Vec<&str> = w.sf.config().statuses.iter().map(String::as_str).collect();
    assert_eq!(values, configured);
    assert!(status.has_active_value("Approved"));
    let account = order.field("AccountId").unwrap();
    assert_eq!(account.field_type, FieldType::Reference);
    assert_eq!(account.reference_to, ["Account"]);
    let error = order.field("Provisioning_Error__c").unwrap();
    assert!(error.custom && error.updateable && error.field_type.is_text());
    assert_eq!(error.length, 255);
    let request = order.field("Portal_Request_Id__c").unwrap();
    assert!(request.external_id && request.unique);

    let item = w.api.describe("OrderItem").await.unwrap();
    assert_eq!(
        item.field("Config_Options__c").unwrap().field_type,
        FieldType::TextArea
    );
    assert!(item.field("Quantity").unwrap().field_type.is_number());
    for object in ["Account", "Product2", "PricebookEntry"] {
        let d = w.api.describe(object).await.unwrap();
        assert_eq!(d.name, object);
        assert!(d.field("Id").is_some());
    }
}

#[tokio::test]
async fn removed_fields_and_permissions_show_in_describe() {
    let w = world().await;
    assert!(w.sf.remove_field("Order", "WHMCS_Service_Ids__c"));
    assert!(w.sf.set_updateable("Order", "Provisioning_Error__c", false));
    let order = w.api.describe("Order").await.unwrap();
    assert!(order.field("WHMCS_Service_Ids__c").is_none());
    assert!(!order.field("Provisioning_Error__c").unwrap().updateable);
    assert!(order.field("Status").unwrap().updateable);

    assert!(w.sf.set_object_updateable("Order", false));
    let order = w.api.describe("Order").await.unwrap();
    assert!(!order.updateable);
    assert!(!order.field("Status").unwrap().updateable);
}

#[tokio::test]
async fn unknown_objects_and_bad_names_are_typed_errors() {
    let w = world().await;
    let err = w.api.describe("Contract").await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownSObject { action: Action::Describe, sobject } if sobject == "Contract"),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Reconfigure);

    let before = w.sf.total_requests();
    for bad in ["", "Order/../../query", "Order?q=1", "1Order"] {
        let err = w.api.describe(bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest { .. }),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(w.sf.total_requests(), before, "nothing was sent");
}

#[tokio::test]
async fn an_expired_session_is_renewed_once_and_faults_are_retried() {
    let w = world().await;
    w.api.describe("Order").await.unwrap();
    let tokens_before = w.sf.token_requests();
    w.sf.expire_all_tokens();
    w.api.describe("Order").await.unwrap();
    assert_eq!(w.sf.token_requests(), tokens_before + 1);

    let before = w.sf.requests(Route::Describe);
    w.sf.faults().fail_next(
        Route::Describe,
        1,
        sandbox::salesforce::FaultKind::Status(503),
    );
    w.api.describe("Order").await.unwrap();
    assert_eq!(w.sf.faults().fired(Route::Describe), 1);
    assert_eq!(w.sf.requests(Route::Describe), before + 2);
}
