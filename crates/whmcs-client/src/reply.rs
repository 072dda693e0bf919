//! Reply decoding as one pure function, [`decode_reply`]: the envelope rules of
//! [`HttpWhmcsClient`](crate::HttpWhmcsClient) followed by the typed, lenient reading of the
//! action's success reply. The client runs exactly this on every body it receives; robustness
//! tests and fuzz targets call it directly.

use serde::de::DeserializeOwned;

use crate::catalog::{CatalogEnvelope, CatalogProduct, PaymentMethod, PaymentMethodsEnvelope};
use crate::error::{Action, Error, Result};
use crate::http::interpret;
use crate::model::{
    AddClientEnvelope, ClientDetails, ClientDetailsEnvelope, ListPage, Order, OrdersEnvelope,
    PlacedOrder, ProductsEnvelope, Service,
};

/// A decoded success reply, by action.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Reply {
    /// `GetClientsDetails`.
    ClientDetails(ClientDetails),
    /// One page of `GetClientsProducts`.
    Products(ListPage<Service>),
    /// `AddOrder`.
    PlacedOrder(PlacedOrder),
    /// One page of `GetOrders`.
    Orders(ListPage<Order>),
    /// `AddClient`: the new client's id.
    ClientId(u64),
    /// `AcceptOrder` and `ModuleCreate`: success carries no data.
    Done,
    /// `GetProducts`: the catalog products.
    CatalogProducts(Vec<CatalogProduct>),
    /// `GetPaymentMethods`: the active gateways.
    PaymentMethods(Vec<PaymentMethod>),
}

/// Decodes the body of a reply to `action` that arrived with `http_status`, as the client does:
/// any bytes give either a [`Reply`] or a classified [`Error`], never a panic.
pub fn decode_reply(action: Action, http_status: u16, body: &[u8]) -> Result<Reply> {
    interpret(action, http_status, body)?;
    let value = body;
    Ok(match action {
        Action::GetClientsDetails => {
            Reply::ClientDetails(client_details(decode_typed(action, value)?)?)
        }
        Action::GetClientsProducts => Reply::Products(products_page(decode_typed(action, value)?)),
        Action::AddOrder => Reply::PlacedOrder(decode_typed(action, value)?),
        Action::GetOrders => Reply::Orders(orders_page(decode_typed(action, value)?)),
        Action::AddClient => {
            let env: AddClientEnvelope = decode_typed(action, value)?;
            Reply::ClientId(env.client_id)
        }
        Action::AcceptOrder | Action::ModuleCreate => Reply::Done,
        Action::GetProducts => {
            let env: CatalogEnvelope = decode_typed(action, value)?;
            Reply::CatalogProducts(env.products)
        }
        Action::GetPaymentMethods => {
            let env: PaymentMethodsEnvelope = decode_typed(action, value)?;
            Reply::PaymentMethods(env.methods)
        }
    })
}

/// Reads a success envelope as `T`; a shape mismatch is an error after the request was sent.
pub(crate) fn decode_typed<T: DeserializeOwned>(action: Action, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::after_send(
            action,
            Some(200),
            // serde's message may quote reply values (which can be secrets): leave it out.
            format!(
                "success reply does not have the expected shape ({:?} error)",
                e.classify()
            ),
        )
    })
}

/// The client of a `GetClientsDetails` success reply, which must have one.
pub(crate) fn client_details(env: ClientDetailsEnvelope) -> Result<ClientDetails> {
    env.client.ok_or_else(|| Error::Transient {
        action: Action::GetClientsDetails,
        http_status: Some(200),
        reason: "success reply without a client".to_owned(),
    })
}

/// One `GetClientsProducts` page.
pub(crate) fn products_page(env: ProductsEnvelope) -> ListPage<Service> {
    ListPage {
        total_results: env.total_results,
        start_number: env.start_number,
        num_returned: env.num_returned,
        items: env.products,
    }
}

/// One `GetOrders` page.
pub(crate) fn orders_page(env: OrdersEnvelope) -> ListPage<Order> {
    ListPage {
        total_results: env.total_results,
        start_number: env.start_number,
        num_returned: env.num_returned,
        items: env.orders,
    }
}
