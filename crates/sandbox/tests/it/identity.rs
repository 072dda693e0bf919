//! The identity and schema endpoints a third-party client reads: `userinfo` after a real JWT
//! bearer login, and sObject describe with the org's fields, over plain HTTP.

use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox};
use serde_json::{Value, json};
use test_support::keys;

/// Logs in as `sub` with an RS256 assertion signed by the test key; the token response.
async fn login(sf: &SalesforceSandbox, http: &reqwest::Client, sub: &str) -> Value {
    crate::login(sf, http, sub, "https://login.salesforce.com").await
}

async fn sandbox() -> SalesforceSandbox {
    SalesforceSandbox::start(SalesforceConfig {
        usernames: vec![
            "integration@example.com".into(),
            "second@example.com".into(),
        ],
        ..SalesforceConfig::trusting(keys::PUBLIC_KEY_PEM)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn userinfo_answers_for_the_token_user_and_refuses_expired_tokens() {
    let sf = sandbox().await;
    let http = reqwest::Client::new();
    let url = format!("{}/services/oauth2/userinfo", sf.base_url());
    for (sub, user_id) in [
        ("integration@example.com", 1_u64),
        ("second@example.com", 2),
    ] {
        let token = login(&sf, &http, sub).await;
        let access = token["access_token"].as_str().unwrap();
        // The id URL: .../id/<orgId>/<userId>.
        let id_url = token["id"].as_str().unwrap();
        let mut parts = id_url.rsplit('/');
        let (user, org) = (parts.next().unwrap(), parts.next().unwrap());

        let got = http.get(&url).bearer_auth(access).send().await.unwrap();
        assert_eq!(got.status(), 200);
        let info: Value = got.json().await.unwrap();
        assert_eq!(info["organization_id"], org);
        assert_eq!(info["user_id"], user);
        assert_eq!(user, sandbox::salesforce::salesforce_id("005", user_id));
        assert_eq!(info["sub"], id_url);
        assert_eq!(info["preferred_username"], sub);
        assert_eq!(info["email"], sub);
        assert_eq!(info["active"], true);
        assert_eq!(info["email_verified"], true);
        assert_eq!(info["user_type"], "STANDARD");
        for key in ["nickname", "name", "zoneinfo", "locale", "updated_at"] {
            assert!(info[key].is_string(), "{key}: {info}");
        }
        let rest = info["urls"]["rest"].as_str().unwrap();
        assert_eq!(
            rest,
            format!("{}/services/data/v{{version}}/", sf.base_url())
        );
        assert!(
            info["urls"]["sobjects"]
                .as_str()
                .unwrap()
                .ends_with("/services/data/v{version}/sobjects/")
        );
        assert!(
            info["urls"]["query"]
                .as_str()
                .unwrap()
                .ends_with("/services/data/v{version}/query/")
        );
        assert_eq!(info["organization_id"], sf.org_id());

        // POST works too.
        let posted: Value = http
            .post(&url)
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(posted["user_id"], user);
    }

    // No token, a made-up token, an expired token: 403 with Salesforce's plain-text code.
    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 403);
    assert_eq!(missing.text().await.unwrap(), "Missing_OAuth_Token");
    let access = login(&sf, &http, "integration@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bogus = http
        .get(&url)
        .bearer_auth("00Dnope!AQ")
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 403);
    sf.expire_all_tokens();
    let expired = http.get(&url).bearer_auth(&access).send().await.unwrap();
    assert_eq!(expired.status(), 403);
    assert_eq!(expired.text().await.unwrap(), "Bad_OAuth_Token");
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn field<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
}

#[tokio::test]
async fn describe_lists_the_org_fields_and_follows_removals_and_permissions() {
    let sf = sandbox().await;
    let http = reqwest::Client::new();
    let token = login(&sf, &http, "integration@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = |object: &str| {
        format!(
            "{}/services/data/v62.0/sobjects/{object}/describe",
            sf.base_url()
        )
    };

    let (status, order) = get(&http, &url("Order"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(order["name"], "Order");
    assert_eq!(order["queryable"], true);
    for name in [
        "Id",
        "Status",
        "OrderNumber",
        "AccountId",
        "EffectiveDate",
        "Pricebook2Id",
        "Customer_Number__c",
        "WHMCS_Client_Id__c",
        "WHMCS_Order_Id__c",
        "WHMCS_Service_Ids__c",
        "Provisioning_Error__c",
        "Provisioned_At__c",
        "Portal_Request_Id__c",
    ] {
        assert!(field(&order, name).is_some(), "Order.{name}");
    }
    let status_field = field(&order, "Status").unwrap();
    assert_eq!(status_field["type"], "picklist");
    let values: Vec<&str> = status_field["picklistValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    let statuses: Vec<&str> = sf.config().statuses.iter().map(String::as_str).collect();
    assert_eq!(values, statuses);
    assert_eq!(
        field(&order, "AccountId").unwrap()["referenceTo"],
        json!(["Account"])
    );
    assert_eq!(
        field(&order, "Portal_Request_Id__c").unwrap()["custom"],
        true
    );
    assert_eq!(
        field(&order, "Portal_Request_Id__c").unwrap()["externalId"],
        true
    );

    for (object, fields) in [
        (
            "OrderItem",
            &[
                "OrderId",
                "PricebookEntryId",
                "Product2Id",
                "Quantity",
                "UnitPrice",
                "WHMCS_Product_Id__c",
                "Billing_Cycle__c",
                "Config_Options__c",
            ][..],
        ),
        (
            "Account",
            &["Name", "Customer_Number__c", "WHMCS_Client_Id__c"][..],
        ),
        ("Product2", &["Name", "IsActive", "WHMCS_Product_Id__c"][..]),
        (
            "PricebookEntry",
            &["Pricebook2Id", "Product2Id", "UnitPrice", "IsActive"][..],
        ),
    ] {
        let (status, describe) = get(&http, &url(object), &token).await;
        assert_eq!(status, 200, "{object}");
        for name in fields {
            assert!(field(&describe, name).is_some(), "{object}.{name}");
        }
    }

    // Unknown sObject: 404 NOT_FOUND in Salesforce's error array; a bad version too.
    let (status, body) = get(&http, &url("Contract"), &token).await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["errorCode"], "NOT_FOUND");
    let (status, _) = get(
        &http,
        &format!("{}/services/data/62/sobjects/Order/describe", sf.base_url()),
        &token,
    )
    .await;
    assert_eq!(status, 404);

    // A removed field disappears from describe and breaks SOQL and PATCH naming it.
    assert!(sf.remove_field("Order", "Provisioning_Error__c"));
    assert!(sf.set_updateable("Order", "WHMCS_Order_Id__c", false));
    let (_, order) = get(&http, &url("Order"), &token).await;
    assert!(field(&order, "Provisioning_Error__c").is_none());
    assert_eq!(
        field(&order, "WHMCS_Order_Id__c").unwrap()["updateable"],
        false
    );
    let q = "SELECT Id, OrderNumber, Status FROM Order WHERE Portal_Request_Id__c = 'x'";
    let query_url = format!("{}/services/data/v62.0/query", sf.base_url());
    let ok = http
        .get(&query_url)
        .query(&[("q", q)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(sf.remove_field("Order", "Portal_Request_Id__c"));
    let refused = http
        .get(&query_url)
        .query(&[("q", q)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");

    let order_id = sandbox::salesforce::salesforce_id("801", 1);
    sf.insert_order(sandbox::salesforce::SfOrder::new(
        order_id.clone(),
        "Approved",
    ));
    let patch = |body: Value| {
        http.patch(format!(
            "{}/services/data/v62.0/sobjects/Order/{order_id}",
            sf.base_url()
        ))
        .bearer_auth(&token)
        .json(&body)
        .send()
    };
    let removed = patch(json!({"Provisioning_Error__c": "boom"}))
        .await
        .unwrap();
    assert_eq!(removed.status(), 400);
    let body: Value = removed.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    let read_only = patch(json!({"WHMCS_Order_Id__c": "7"})).await.unwrap();
    assert_eq!(read_only.status(), 400);
    let body: Value = read_only.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD_FOR_INSERT_UPDATE");
    let fine = patch(json!({"Status": "Provisioning"})).await.unwrap();
    assert_eq!(fine.status(), 204);

    // Object-level edit access.
    assert!(sf.set_object_updateable("Order", false));
    let (_, order) = get(&http, &url("Order"), &token).await;
    assert_eq!(order["updateable"], false);
    assert_eq!(field(&order, "Status").unwrap()["updateable"], false);
    assert!(!sf.remove_field("Order", "No_Such_Field__c"));

    // Expired token: the REST API's 401.
    sf.expire_all_tokens();
    let (status, body) = get(&http, &url("Order"), &token).await;
    assert_eq!(status, 401);
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
}
