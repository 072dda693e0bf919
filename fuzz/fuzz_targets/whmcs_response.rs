//! WHMCS reply bodies: `whmcs_client::decode_reply` (what the client runs on every reply) gives
//! a reply or a classified error for any action, status and bytes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whmcs_client::{Action, Error, ErrorClass, decode_reply};

const ACTIONS: [Action; 9] = [
    Action::GetClientsDetails,
    Action::GetClientsProducts,
    Action::AddOrder,
    Action::AcceptOrder,
    Action::GetOrders,
    Action::ModuleCreate,
    Action::AddClient,
    Action::GetProducts,
    Action::GetPaymentMethods,
];

const STATUSES: [u16; 8] = [200, 201, 302, 400, 403, 404, 500, 503];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let action = ACTIONS[usize::from(selector & 0x0f) % ACTIONS.len()];
    let status = STATUSES[usize::from(selector >> 5)];
    if let Err(err) = decode_reply(action, status, body) {
        assert!(!matches!(err, Error::InvalidInput { .. }), "{err}");
        assert_eq!(err.action(), Some(action));
        if status == 200 {
            match err.class() {
                ErrorClass::UnknownOutcome => assert!(action.is_mutating(), "{err}"),
                ErrorClass::Transient => assert!(!action.is_mutating(), "{err}"),
                _ => {}
            }
        }
    }
});
