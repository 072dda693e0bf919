//! Reply decoding as one pure function, [`decode_reply`]: the envelope rules of
//! [`HttpWhmcsClient`](crate::HttpWhmcsClient) followed by the typed, lenient reading of the
//! action's success reply. The client runs exactly this on every body it receives; robustness
//! tests and fuzz targets call it directly.

use serde::de::DeserializeOwned;

use crate::catalog::{CatalogEnvelope, CatalogProduct, PaymentMethod, PaymentMethodsEnvelope};
use crate::error::{Action, Error, Result};
use crate::http::{envelope_success, interpret, opens_object};
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
    let value = body;
    let envelope = || interpret(action, http_status, body);
    Ok(match action {
        Action::GetClientsDetails => {
            envelope()?;
            Reply::ClientDetails(client_details(decode_typed(action, value)?)?)
        }
        Action::GetClientsProducts => {
            let env = match check_one_pass(http_status, body.to_vec())? {
                Checked::Read(env) => env,
                Checked::Body(bytes) => decode_typed(action, &bytes)?,
            };
            Reply::Products(products_page(env))
        }
        Action::AddOrder => {
            envelope()?;
            Reply::PlacedOrder(decode_typed(action, value)?)
        }
        Action::GetOrders => {
            envelope()?;
            Reply::Orders(orders_page(decode_typed(action, value)?))
        }
        Action::AddClient => {
            envelope()?;
            let env: AddClientEnvelope = decode_typed(action, value)?;
            Reply::ClientId(env.client_id)
        }
        Action::AcceptOrder | Action::ModuleCreate => {
            envelope()?;
            Reply::Done
        }
        Action::GetProducts => {
            envelope()?;
            let env: CatalogEnvelope = decode_typed(action, value)?;
            Reply::CatalogProducts(env.products)
        }
        Action::GetPaymentMethods => {
            envelope()?;
            let env: PaymentMethodsEnvelope = decode_typed(action, value)?;
            Reply::PaymentMethods(env.methods)
        }
    })
}

/// What [`check_one_pass`] made of a `GetClientsProducts` reply.
pub(crate) enum Checked<T = Service> {
    /// A success page, checked and read in one pass.
    Read(ProductsEnvelope<T>),
    /// A body that passed the envelope check but must still be read (and may not have the
    /// page's shape).
    Body(Vec<u8>),
}

/// The envelope check of a `GetClientsProducts` reply, reading the page in the same pass when
/// it can: an HTTP 200 JSON object that reads as a page whose envelope says success is that
/// page. Anything else goes through [`interpret`] as every other reply does, so errors, and
/// the replies that pass, are exactly those of the envelope check followed by the typed
/// reading (the envelope fields are the page type's own, duplicates included).
pub(crate) fn check_one_pass<T: DeserializeOwned>(
    http_status: u16,
    bytes: Vec<u8>,
) -> Result<Checked<T>> {
    if http_status == 200
        && opens_object(&bytes)
        && let Ok(env) = serde_json::from_slice::<ProductsEnvelope<T>>(&bytes)
        && envelope_success(&env.result, &env.status)
    {
        return Ok(Checked::Read(env));
    }
    interpret(Action::GetClientsProducts, http_status, &bytes).map(|()| Checked::Body(bytes))
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
pub(crate) fn products_page<T>(env: ProductsEnvelope<T>) -> ListPage<T> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ServiceRef;

    /// The reading before the one-pass check: the envelope check, then the typed reading.
    fn two_passes(status: u16, body: &[u8]) -> Result<ListPage<Service>> {
        let action = Action::GetClientsProducts;
        interpret(action, status, body)?;
        Ok(products_page(decode_typed(action, body)?))
    }

    fn one_pass(status: u16, body: &[u8]) -> Result<ListPage<Service>> {
        match decode_reply(Action::GetClientsProducts, status, body)? {
            Reply::Products(page) => Ok(page),
            other => panic!("not a products reply: {other:?}"),
        }
    }

    /// A reading's result as text: the page's counts and each item as `item` shows it, or
    /// the error.
    fn described<T, D: std::fmt::Debug>(
        result: Result<ListPage<T>>,
        item: impl Fn(&T) -> D,
    ) -> String {
        match result {
            Ok(page) => format!(
                "ok {} {} {} {:?}",
                page.total_results,
                page.start_number,
                page.num_returned,
                page.items.iter().map(item).collect::<Vec<_>>()
            ),
            Err(e) => format!("err {:?} {e}", e.class()),
        }
    }

    fn outcome(result: Result<ListPage<Service>>) -> String {
        described(result, |s| (s.id, s.order_id, s.product_id))
    }

    const PAGE: &str = r#"{"result":"success","clientid":"7","totalresults":"2","startnumber":0,"numreturned":2,"products":{"product":[{"id":"11","orderid":"5","pid":"3","status":"Active"},{"id":12,"orderid":5,"pid":4}]}}"#;

    #[test]
    fn the_one_pass_check_agrees_with_the_two_passes() {
        let mut cases: Vec<(u16, Vec<u8>)> = Vec::new();
        let fixed = [
            PAGE.to_owned(),
            PAGE.replace(r#""result":"success""#, r#""result":" Success ""#),
            PAGE.replace(
                r#""result":"success""#,
                r#""result":"error","message":"Client Not Found""#,
            ),
            PAGE.replace(
                r#""result":"success""#,
                r#""result":"success","status":"error""#,
            ),
            PAGE.replace(r#""result":"success""#, r#""status":"success""#),
            PAGE.replace(
                r#""result":"success""#,
                r#""result":"success","result":"success""#,
            ),
            PAGE.replace(
                r#""result":"success""#,
                r#""result":"success","message":1,"message":2"#,
            ),
            PAGE.replace(
                r#""result":"success""#,
                r#""result":"success","warning":[],"warning":{}"#,
            ),
            PAGE.replace(r#""result":"success""#, r#""result":1"#),
            PAGE.replace(r#""result":"success""#, r#""result":null"#),
            PAGE.replace(r#""products":{"product":["#, r#""products":{"product":[7,"#),
            PAGE.replace(r#""numreturned":2"#, r#""numreturned":"two""#),
            format!("  \n{PAGE}"),
            format!("{PAGE} x"),
            format!("[{PAGE}]"),
            r#"["success"]"#.to_owned(),
            r#"{"result":"success"}"#.to_owned(),
            "<html>502</html>".to_owned(),
            String::new(),
        ];
        for body in fixed {
            for status in [200, 201, 302, 403, 500] {
                cases.push((status, body.clone().into_bytes()));
            }
        }
        // Every truncation of the page, and every byte of it replaced by a few others.
        for end in 0..PAGE.len() {
            cases.push((200, PAGE.as_bytes()[..end].to_vec()));
        }
        for at in 0..PAGE.len() {
            for byte in [b'"', b'}', b'1', b' ', b'x'] {
                let mut body = PAGE.as_bytes().to_vec();
                body[at] = byte;
                cases.push((200, body));
            }
        }
        let mut read_in_one_pass = 0;
        for (status, body) in &cases {
            let before = outcome(two_passes(*status, body));
            let after = outcome(one_pass(*status, body));
            assert_eq!(
                before,
                after,
                "status {status}, body {:?}",
                String::from_utf8_lossy(body)
            );
            if matches!(
                check_one_pass::<Service>(*status, body.clone()),
                Ok(Checked::Read(_))
            ) {
                read_in_one_pass += 1;
            }
        }
        // The fast path is taken (the page itself, its lenient variants).
        assert!(read_in_one_pass > 10, "{read_in_one_pass}");
    }

    /// A page as `HttpWhmcsClient` reads it, each item as `T`.
    fn page_as<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<ListPage<T>> {
        let action = Action::GetClientsProducts;
        Ok(match check_one_pass::<T>(status, body.to_vec())? {
            Checked::Read(env) => products_page(env),
            Checked::Body(bytes) => products_page::<T>(decode_typed(action, &bytes)?),
        })
    }

    /// A page of services with custom fields, config options and the fields the lookup skips.
    const FULL_PAGE: &str = r#"{"result":"success","clientid":"7","totalresults":"3","startnumber":0,"numreturned":3,"products":{"product":[{"id":"11","qty":1,"clientid":"7","orderid":"5","ordernumber":"881","pid":"3","regdate":"2026-01-01","name":"VPS","translated_name":"VPS","groupname":"Servers","domain":"a.example","dedicatedip":"","serverid":0,"firstpaymentamount":"0.00","billingcycle":"Monthly","nextduedate":"0000-00-00","status":"Active","username":"","password":"s3cret","notes":"x\"y","customfields":{"customfield":[{"id":"8","name":"Ref","translated_name":"Ref","value":"801xx"},{"id":9,"name":"Note","value":"\u00e9t\u00e9"}]},"configoptions":{"configoption":[{"id":3,"option":"Root","type":"text","value":"pw"}]}},{"id":12,"orderid":5,"pid":4,"customfields":"","configoptions":""},{"id":"13","orderid":"6","pid":"3","customfields":{"customfield":{"id":"8","value":"801yy"}}}]}}"#;

    fn refs(result: Result<ListPage<ServiceRef>>) -> String {
        described(result, |s| {
            (s.id, s.order_id, s.product_id, fields(&s.custom_fields))
        })
    }

    /// A service's id, order id, product id and custom fields (id, value).
    type Ids = (u64, u64, u64, Vec<(u64, String)>);

    fn fields(fields: &[crate::FieldRef]) -> Vec<(u64, String)> {
        fields.iter().map(|f| (f.id, f.value.clone())).collect()
    }

    #[test]
    fn the_lean_reading_of_services_agrees_with_the_full_one() {
        let lean = page_as::<ServiceRef>(200, FULL_PAGE.as_bytes()).unwrap();
        assert_eq!(lean.total_results, 3);
        let read: Vec<Ids> = lean
            .items
            .iter()
            .map(|s| (s.id, s.order_id, s.product_id, fields(&s.custom_fields)))
            .collect();
        assert_eq!(
            read,
            vec![
                (
                    11,
                    5,
                    3,
                    vec![(8, "801xx".to_owned()), (9, "\u{e9}t\u{e9}".to_owned())]
                ),
                (12, 5, 4, vec![]),
                (13, 6, 3, vec![(8, "801yy".to_owned())]),
            ]
        );
        assert_eq!(lean.items[0].custom_field(8), Some("801xx"));
        assert_eq!(lean.items[2].custom_field(9), None);
        // Values are customer data: never in Debug.
        assert!(!format!("{:?}", lean.items).contains("801xx"));

        // Every truncation and many one-byte changes of the page: wherever the full reading
        // gives a page, the lean one gives the same ids and fields; where the full one fails,
        // the lean one fails too or reads exactly the unchanged page's ids and fields.
        let mut cases: Vec<(u16, Vec<u8>)> = vec![(200, FULL_PAGE.as_bytes().to_vec())];
        for end in 0..FULL_PAGE.len() {
            cases.push((200, FULL_PAGE.as_bytes()[..end].to_vec()));
        }
        for at in 0..FULL_PAGE.len() {
            for byte in [b'"', b'}', b'1', b' '] {
                let mut body = FULL_PAGE.as_bytes().to_vec();
                body[at] = byte;
                cases.push((200, body));
            }
        }
        for status in [201, 403, 500] {
            cases.push((status, FULL_PAGE.as_bytes().to_vec()));
        }
        let original = refs(page_as::<ServiceRef>(200, FULL_PAGE.as_bytes()));
        let (mut same_page, mut skipped) = (0, 0);
        for (status, body) in &cases {
            let full = page_as::<Service>(*status, body).map(|page| ListPage {
                total_results: page.total_results,
                start_number: page.start_number,
                num_returned: page.num_returned,
                items: page.items.iter().map(ServiceRef::from).collect(),
            });
            let lean = page_as::<ServiceRef>(*status, body);
            if full.is_ok() {
                same_page += 1;
                assert_eq!(
                    refs(full),
                    refs(lean),
                    "status {status}, body {:?}",
                    String::from_utf8_lossy(body)
                );
            } else if lean.is_ok() {
                // The full reading refused a value the lean one skips (a client id that is
                // not a number, say): the lean one then reads what the page says unchanged.
                skipped += 1;
                assert_eq!(
                    refs(lean),
                    original,
                    "body {:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert!(same_page > 50, "{same_page}");
        assert!(skipped > 0, "no change fell in a skipped field");
    }
}
