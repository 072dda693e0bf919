//! The `mock` feature's `MockWhmcsApi` stands in for the trait (as the core's tests use it).

use whmcs_client::{MockWhmcsApi, PlacedOrder, WhmcsApi};

#[tokio::test]
async fn automock_implements_the_trait() {
    let mut mock = MockWhmcsApi::new();
    mock.expect_find_service_by_custom_field()
        .withf(|client, field, value| *client == 7 && *field == 12 && value == "801A")
        .returning(|_, _, _| Ok(None));
    mock.expect_add_order().returning(|order| {
        Ok(PlacedOrder {
            order_id: 1,
            service_ids: vec![order.client_id],
            addon_ids: vec![],
            domain_ids: vec![],
            invoice_id: None,
        })
    });
    let api: &dyn WhmcsApi = &mock;
    assert!(
        api.find_service_by_custom_field(7, 12, "801A")
            .await
            .unwrap()
            .is_none()
    );
    let placed = api
        .add_order(&whmcs_client::NewOrder::new(7, vec![]))
        .await
        .unwrap();
    assert_eq!(placed.service_ids, vec![7]);
}
