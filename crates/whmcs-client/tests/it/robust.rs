//! Robustness of the reply decoder (`decode_reply`, the function the client runs on every body):
//! random bytes and mutated valid envelopes of each action give a `Reply` or a classified error,
//! never a panic, and never an error class that would mislead the caller.

use proptest::prelude::*;
use test_support::mutation::{Mutation, apply};
use whmcs_client::{Action, Error, ErrorClass, Reply, decode_reply};

/// A config option value that must never reach an error message.
const SECRET: &str = "pw-Zq9sEcReT";

const ACTIONS: [Action; 7] = [
    Action::GetClientsDetails,
    Action::GetClientsProducts,
    Action::AddOrder,
    Action::AcceptOrder,
    Action::GetOrders,
    Action::ModuleCreate,
    Action::AddClient,
];

/// A valid success body for `action`, shaped as real WHMCS sends it.
fn valid_body(action: Action) -> String {
    match action {
        Action::GetClientsDetails => r#"{"result":"success","userid":4,"client_id":"4","client":{"id":4,"userid":"4","firstname":"Ada","lastname":"L","email":"ada@example.com","status":"Active","customfields":[{"id":"8","value":"C-7"}]},"stats":{"numactiveorders":"1"}}"#.to_owned(),
        Action::GetClientsProducts => format!(
            r#"{{"result":"success","clientid":"4","totalresults":"2","startnumber":0,"numreturned":2,"products":{{"product":[{{"id":1,"clientid":"4","orderid":9,"pid":"5","status":"Active","customfields":{{"customfield":[{{"id":"8","name":"Ref","value":"801xx"}}]}},"configoptions":{{"configoption":[{{"id":3,"option":"Root","type":"text","value":"{SECRET}"}}]}}}},{{"id":"2","customfields":"","configoptions":""}}]}}}}"#
        ),
        Action::AddOrder => r#"{"result":"success","orderid":"12","serviceids":"31,32","addonids":"","domainids":"","invoiceid":0}"#.to_owned(),
        Action::AcceptOrder | Action::ModuleCreate => r#"{"result":"success"}"#.to_owned(),
        Action::GetOrders => r#"{"result":"success","totalresults":1,"startnumber":0,"numreturned":1,"orders":{"order":[{"id":12,"ordernum":"5551","userid":4,"status":"Active","invoiceid":0,"lineitems":{"lineitem":[{"type":"product","relid":31,"product":"VPS"},{"type":"product","relid":"32"}]}}]}}"#.to_owned(),
        Action::AddClient => r#"{"result":"success","clientid":"77"}"#.to_owned(),
        _ => unreachable!("every action is listed"),
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Structural JSON bytes make the interesting edits.
    test_support::mutation::mutation(
        any::<u8>(),
        prop::sample::select(b"{}[]\",:0-e \\".to_vec()),
    )
}

/// The properties every outcome must have.
fn check(action: Action, status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    match decode_reply(action, status, body) {
        Ok(reply) => {
            // A success is only ever read from a 2xx-or-error-status JSON object naming success.
            prop_assert!(!(300..400).contains(&status));
            let expected_kind = matches!(
                (action, &reply),
                (Action::GetClientsDetails, Reply::ClientDetails(_))
                    | (Action::GetClientsProducts, Reply::Products(_))
                    | (Action::AddOrder, Reply::PlacedOrder(_))
                    | (Action::GetOrders, Reply::Orders(_))
                    | (Action::AddClient, Reply::ClientId(_))
                    | (Action::AcceptOrder | Action::ModuleCreate, Reply::Done)
            );
            prop_assert!(expected_kind, "{action}: {reply:?}");
        }
        Err(err) => {
            let text = err.to_string();
            prop_assert!(!text.contains(SECRET), "secret in error: {text}");
            prop_assert!(!matches!(err, Error::InvalidInput { .. }), "{text}");
            prop_assert_eq!(err.action(), Some(action));
            if status == 200 {
                // A broken reply to a write may hide an applied change; to a read it may not.
                match err.class() {
                    ErrorClass::UnknownOutcome => prop_assert!(action.is_mutating(), "{text}"),
                    ErrorClass::Transient => prop_assert!(!action.is_mutating(), "{text}"),
                    ErrorClass::Configuration | ErrorClass::Business => {}
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_valid_body_decodes() {
    for action in ACTIONS {
        let reply = decode_reply(action, 200, valid_body(action).as_bytes());
        assert!(reply.is_ok(), "{action}: {reply:?}");
        check(action, 200, valid_body(action).as_bytes()).unwrap();
    }
    let Ok(Reply::Products(page)) = decode_reply(
        Action::GetClientsProducts,
        200,
        valid_body(Action::GetClientsProducts).as_bytes(),
    ) else {
        panic!("products page expected")
    };
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.total_results, 2);
}

#[test]
fn the_decoder_classifies_what_it_rejects() {
    let err = decode_reply(Action::AddOrder, 200, b"<html>fatal error</html>").unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome);
    let err = decode_reply(Action::GetOrders, 200, b"").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    let err = decode_reply(Action::AddClient, 200, br#"{"result":"success"}"#).unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome);
    let err = decode_reply(Action::GetClientsDetails, 200, br#"{"result":"success"}"#).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn random_bytes_give_typed_errors(
        action in prop::sample::select(ACTIONS.to_vec()),
        status in prop::sample::select(vec![200_u16, 201, 302, 400, 403, 404, 500, 503]),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check(action, status, &body)?;
        // Bytes that are not a JSON object never decode.
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_err() {
            prop_assert!(decode_reply(action, status, &body).is_err());
        }
    }

    #[test]
    fn mutated_valid_envelopes_give_replies_or_typed_errors(
        action in prop::sample::select(ACTIONS.to_vec()),
        status in prop::sample::select(vec![200_u16, 200, 200, 500, 403]),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let body = apply(valid_body(action).into_bytes(), &mutations);
        check(action, status, &body)?;
    }
}
