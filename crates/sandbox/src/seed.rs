//! Seeding an org for demos and manual tests:  WHMCS clients and a product with the external-ref custom field, Salesforce
//! Accounts and Approved Orders pointing at them, the events announcing those Orders, and for
//! each WHMCS product a Product2 with an active PricebookEntry (for the order intake).

use crate::salesforce::{SalesforceSandbox, SfAccount, SfOrder, SfOrderItem, salesforce_id};
use crate::whmcs::{Client, Product, WhmcsSandbox};
use serde_json::Value;
use sf_pubsub::OrderProvisionRequested;

/// `Config_Options__c` for every OrderItem, and the option ids the product defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOptions {
    /// Option ids (each becomes a text option of the product).
    pub ids: Vec<u64>,
    /// The JSON object text stored in `Config_Options__c`.
    pub json: String,
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Customers (Account + WHMCS client each).
    pub customers: u32,
    /// Orders per customer.
    pub orders_per_customer: u32,
    /// `Quantity` of each OrderItem.
    pub quantity: u32,
    /// `Billing_Cycle__c` of each OrderItem.
    pub billing_cycle: String,
    /// `Config_Options__c` of each OrderItem.
    pub config_options: Option<ConfigOptions>,
    /// `Status` of each Order.
    pub status: String,
    /// The WHMCS product custom field holding the Salesforce Order Id (of the only product
    /// when `products` is 1).
    pub order_ref_field_id: u64,
    /// WHMCS products in the catalogue (at least 1). With more than one, product `k` (from 1)
    /// has ref field `k * 10 + 1` (custom fields are rows per product), and Orders order the
    /// products in turn.
    pub products: u32,
}

/// What was seeded.
#[derive(Debug)]
pub struct Seeded {
    /// The first WHMCS product (the one every OrderItem orders in a one-product catalogue).
    pub product_id: u64,
    /// Every product with its ref field id: `(pid, field id)`.
    pub ref_fields: Vec<(u64, u64)>,
    /// Every product's active PricebookEntry in the sandbox's price book
    /// ([`SalesforceSandbox::pricebook_id`]): `(pid, entry id)`; product `k` (from 1) costs
    /// `10.0 * k`.
    pub pricebook_entries: Vec<(u64, String)>,
    /// One event per Order, ready to publish.
    pub events: Vec<OrderProvisionRequested>,
}

/// `Customer_Number__c` of the `index`-th customer (from 1).
pub fn customer_number(index: u32) -> String {
    format!("CUST-{index:05}")
}

/// The event the Flow publishes when `order` is approved (created by the integration user,
/// as the token endpoint reports it, at `created_date` Unix ms); `None` without a
/// `Customer_Number__c`.
pub fn provision_event(order: &SfOrder, created_date: i64) -> Option<OrderProvisionRequested> {
    Some(OrderProvisionRequested {
        created_date,
        created_by_id: salesforce_id("005", 1),
        order_id: order.id.clone(),
        customer_number: order.customer_number.clone()?,
        account_id: order.account_id.clone(),
    })
}

/// Seeds both sandboxes according to `plan`.
pub fn seed(sf: &SalesforceSandbox, whmcs: &WhmcsSandbox, plan: &Plan) -> Seeded {
    let count = plan.products.max(1);
    let mut ref_fields = Vec::new();
    for k in 1..=count {
        let (name, field) = if count == 1 {
            ("VPS S".to_owned(), plan.order_ref_field_id)
        } else {
            (format!("VPS {k}"), u64::from(k) * 10 + 1)
        };
        let mut product =
            Product::new(&name).with_custom_field(field, "Salesforce Order Id", false);
        for id in plan.config_options.iter().flat_map(|c| &c.ids) {
            product = product.with_config_option(*id, &format!("Option {id}"), "text");
        }
        ref_fields.push((whmcs.seed_product(product), field));
    }
    let pids: Vec<u64> = ref_fields.iter().map(|(pid, _)| *pid).collect();
    let pricebook_entries = pids
        .iter()
        .enumerate()
        .map(|(k, pid)| (*pid, sf.seed_product(*pid, 10.0 * (k as f64 + 1.0))))
        .collect();
    let product_id = pids[0];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut events = Vec::new();
    let mut n: u64 = 0;
    for customer in 1..=plan.customers {
        let number = customer_number(customer);
        let client_id = whmcs.seed_client(Client::active(
            &format!("Customer{customer}"),
            &format!("customer{customer}@example.com"),
        ));
        let account_id = salesforce_id("001", u64::from(customer));
        sf.insert_account(SfAccount {
            id: account_id.clone(),
            name: format!("Customer {customer} Ltd"),
            customer_number: Some(number.clone()),
            whmcs_client_id: Value::String(client_id.to_string()),
        });
        for _ in 0..plan.orders_per_customer {
            n += 1;
            let order_id = salesforce_id("801", n);
            let mut order = SfOrder::new(order_id.clone(), plan.status.clone());
            order.order_number = format!("{:08}", 100 + n);
            order.account_id = Some(account_id.clone());
            order.customer_number = Some(number.clone());
            order.whmcs_client_id = Value::String(client_id.to_string());
            let event = provision_event(&order, now_ms);
            sf.insert_order(order);
            sf.insert_order_item(SfOrderItem {
                id: salesforce_id("802", n),
                order_id,
                quantity: f64::from(plan.quantity),
                whmcs_product_id: Value::String(pids[(n as usize - 1) % pids.len()].to_string()),
                billing_cycle: Some(plan.billing_cycle.clone()),
                config_options: plan.config_options.as_ref().map(|c| c.json.clone()),
            });
            events.extend(event);
        }
    }
    Seeded {
        product_id,
        ref_fields,
        pricebook_entries,
        events,
    }
}

/// The `WHMCS_ORDER_REF_FIELD_ID` value for `seeded`: the one id of a one-product catalogue,
/// else `pid:fieldid` pairs separated by commas.
pub fn ref_field_setting(seeded: &Seeded) -> String {
    match seeded.ref_fields.as_slice() {
        [(_, field)] => field.to_string(),
        pairs => pairs
            .iter()
            .map(|(pid, field)| format!("{pid}:{field}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::salesforce::SalesforceConfig;

    #[tokio::test]
    async fn orders_point_at_their_account_and_whmcs_client() {
        let sf = SalesforceSandbox::start(SalesforceConfig::default())
            .await
            .unwrap();
        let whmcs = WhmcsSandbox::start().await.unwrap();
        let plan = Plan {
            customers: 2,
            orders_per_customer: 3,
            quantity: 2,
            billing_cycle: "annually".into(),
            config_options: Some(ConfigOptions {
                ids: vec![4],
                json: r#"{"4":"pw"}"#.into(),
            }),
            status: "Approved".into(),
            order_ref_field_id: 9,
            products: 1,
        };
        let seeded = seed(&sf, &whmcs, &plan);
        assert_eq!(seeded.events.len(), 6);
        let clients = whmcs.clients();
        assert_eq!(clients.len(), 2);
        assert!(clients.iter().all(|c| c.status == "Active"));
        assert_eq!(sf.accounts().len(), 2);
        let ids: std::collections::HashSet<_> =
            seeded.events.iter().map(|e| e.order_id.clone()).collect();
        assert_eq!(ids.len(), 6, "order ids are distinct");
        for (i, event) in seeded.events.iter().enumerate() {
            let customer = u32::try_from(i / 3).unwrap() + 1;
            let order = sf.order(&event.order_id).unwrap();
            assert_eq!(order.status, "Approved");
            assert_eq!(event.customer_number, customer_number(customer));
            assert_eq!(
                order.customer_number.as_deref(),
                Some(event.customer_number.as_str())
            );
            assert_eq!(order.account_id, event.account_id);
            let client_id = clients[(customer - 1) as usize].id;
            assert_eq!(order.whmcs_client_id, Value::String(client_id.to_string()));
        }
        assert_eq!(ref_field_setting(&seeded), "9");
    }

    #[tokio::test]
    async fn a_multi_product_catalogue_has_a_ref_field_per_product() {
        let sf = SalesforceSandbox::start(SalesforceConfig::default())
            .await
            .unwrap();
        let whmcs = WhmcsSandbox::start().await.unwrap();
        let plan = Plan {
            customers: 1,
            orders_per_customer: 3,
            quantity: 1,
            billing_cycle: "monthly".into(),
            config_options: None,
            status: "Approved".into(),
            order_ref_field_id: 9,
            products: 2,
        };
        let seeded = seed(&sf, &whmcs, &plan);
        assert_eq!(seeded.ref_fields, [(1, 11), (2, 21)]);
        assert_eq!(ref_field_setting(&seeded), "1:11,2:21");
        assert_eq!(seeded.events.len(), 3);
        // Each product is priced in the sandbox's price book.
        let entries = sf.pricebook_entries();
        assert_eq!(entries.len(), 2);
        for (pid, entry_id) in &seeded.pricebook_entries {
            let entry = entries.iter().find(|e| &e.id == entry_id).unwrap();
            assert!(entry.is_active);
            assert_eq!(entry.pricebook_id, sf.pricebook_id());
            let product = sf
                .products()
                .into_iter()
                .find(|p| p.id == entry.product_id)
                .unwrap();
            assert_eq!(product.whmcs_product_id, Some(*pid));
        }
    }
}
