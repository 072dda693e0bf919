//! Decoding: a byte-level vector worked out by hand from the Avro specification (a
//! `Shipment__e`-like record with two optional strings), garbage payloads, strictness of both
//! paths.

use sf_pubsub::{Error, GenericRecord, OrderProvisionRequested, Record, WriterSchema};
use test_support::mutation::{Mutation, apply};

const INTEROP_SCHEMA: &str = r#"{"type":"record","name":"Shipment__e","namespace":"com.sforce.eventbus","fields":[
    {"name":"CreatedDate","type":"long"},{"name":"CreatedById","type":"string"},
    {"name":"Status__c","type":["null","string"],"default":null},
    {"name":"Note__c","type":["null","string"],"default":null}]}"#;

fn interop_vector() -> Vec<u8> {
    let mut v = hex::decode("80a0abfef962").unwrap();
    v.push(0x24);
    v.extend_from_slice(b"005xx000001X83aAAC");
    v.extend_from_slice(&[0x02, 0x0e]);
    v.extend_from_slice(b"Shipped");
    v.push(0x00);
    v
}

#[test]
fn interop_vector_decodes_to_the_expected_record() {
    let schema = WriterSchema::parse("interop", INTEROP_SCHEMA).unwrap();
    let record = GenericRecord::decode(&schema, &interop_vector()).unwrap();
    assert_eq!(
        record.to_json(),
        serde_json::json!({
            "CreatedDate": 1_700_000_000_000_i64,
            "CreatedById": "005xx000001X83aAAC",
            "Status__c": "Shipped",
            "Note__c": null,
        })
    );
    // The typed record names what this event lacks.
    let err = OrderProvisionRequested::decode(&schema, &interop_vector()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingField {
                field: "OrderId__c"
            }
        ),
        "{err}"
    );
}

#[test]
fn the_same_layout_decodes_typed() {
    let json = INTEROP_SCHEMA
        .replace("Status__c", "OrderId__c")
        .replace("Note__c", "CustomerNumber__c");
    let schema = WriterSchema::parse("x", &json).unwrap();
    let mut payload = interop_vector();
    payload.pop();
    payload.extend_from_slice(&[0x02, 0x06]);
    payload.extend_from_slice(b"C-7");
    let got = OrderProvisionRequested::decode(&schema, &payload).unwrap();
    assert_eq!(
        got,
        OrderProvisionRequested {
            created_date: 1_700_000_000_000,
            created_by_id: "005xx000001X83aAAC".into(),
            order_id: "Shipped".into(),
            customer_number: "C-7".into(),
            account_id: None,
        }
    );
}

/// A small deterministic generator, so failures reproduce.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn garbage_never_panics_and_never_decodes_into_nulls() {
    let schema = WriterSchema::parse("std", OrderProvisionRequested::SCHEMA_JSON).unwrap();
    let mut typed_ok = 0;
    for seed in 0..2_000u64 {
        let len = usize::try_from(seed % 64).unwrap();
        let bytes = garbage(seed, len);
        let typed = OrderProvisionRequested::decode(&schema, &bytes);
        let generic = GenericRecord::decode(&schema, &bytes);
        // Both paths agree on whether the bytes are a valid datum.
        assert_eq!(
            typed.is_ok() || matches!(typed, Err(Error::MissingField { .. })),
            generic.is_ok(),
            "seed {seed}"
        );
        if let Ok(record) = &generic {
            let json = record.to_json();
            assert!(json["CreatedById"].is_string(), "seed {seed}: {json}");
        }
        typed_ok += usize::from(typed.is_ok());
    }
    assert!(typed_ok < 2_000);
}

/// The standard schema plus nullable fields the typed record does not know (it must skip them).
const EXTENDED_SCHEMA: &str = r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[
    {"name":"CreatedDate","type":"long"},{"name":"CreatedById","type":"string"},
    {"name":"Qty__c","type":["null","double"],"default":null},
    {"name":"OrderId__c","type":["null","string"],"default":null},
    {"name":"Count__c","type":["null","long"],"default":null},
    {"name":"CustomerNumber__c","type":["null","string"],"default":null},
    {"name":"Flag__c","type":["null","boolean"],"default":null},
    {"name":"AccountId__c","type":["null","string"],"default":null}]}"#;

fn sample_event(account: bool) -> OrderProvisionRequested {
    OrderProvisionRequested {
        created_date: 1_700_000_000_000,
        created_by_id: "005xx000001X83aAAC".into(),
        order_id: "801xx000003GZXbAAO".into(),
        customer_number: "C-100042".into(),
        account_id: account.then(|| "001xx000003DGb2AAG".into()),
    }
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    test_support::mutation::mutation(
        // Small zig-zag varints (lengths, union branches) and their extremes.
        prop_oneof![0..8u8, Just(0x7f), Just(0x80), Just(0xff), any::<u8>()],
        any::<u8>(),
    )
}

/// Both decoders on `bytes`: they agree on whether the bytes are a datum of `schema`, their
/// errors are the crate's typed ones, and where both decode they read the same values.
fn check_agreement(
    schema: &WriterSchema,
    bytes: &[u8],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prelude::*;
    let typed = OrderProvisionRequested::decode(schema, bytes);
    let generic = GenericRecord::decode(schema, bytes);
    let typed_datum_ok = match &typed {
        Ok(_) | Err(Error::MissingField { .. }) => true,
        Err(Error::MalformedPayload { .. }) => false,
        Err(other) => return Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
    };
    if let Err(err) = &generic {
        prop_assert!(
            matches!(err, Error::MalformedPayload { .. }),
            "generic: {err:?}"
        );
    }
    prop_assert_eq!(
        typed_datum_ok,
        generic.is_ok(),
        "{:?} vs {:?}",
        typed,
        generic
    );
    if let (Ok(event), Ok(record)) = (&typed, &generic) {
        let json = record.to_json();
        prop_assert_eq!(&json["CreatedDate"], &serde_json::json!(event.created_date));
        prop_assert_eq!(
            &json["CreatedById"],
            &serde_json::json!(event.created_by_id)
        );
        prop_assert_eq!(&json["OrderId__c"], &serde_json::json!(event.order_id));
        prop_assert_eq!(
            &json["CustomerNumber__c"],
            &serde_json::json!(event.customer_number)
        );
        prop_assert_eq!(&json["AccountId__c"], &serde_json::json!(event.account_id));
    }
    Ok(())
}

#[test]
fn valid_encodings_decode_on_both_paths() {
    for json in [OrderProvisionRequested::SCHEMA_JSON, EXTENDED_SCHEMA] {
        let schema = WriterSchema::parse("s", json).unwrap();
        for account in [false, true] {
            let event = sample_event(account);
            let bytes = event.encode(&schema).unwrap();
            assert_eq!(
                OrderProvisionRequested::decode(&schema, &bytes).unwrap(),
                event
            );
            assert!(GenericRecord::decode(&schema, &bytes).is_ok());
            check_agreement(&schema, &bytes).unwrap();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(10_000))]

    #[test]
    fn mutated_valid_events_agree_and_never_panic(
        extended in proptest::bool::ANY,
        account in proptest::bool::ANY,
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let json = if extended { EXTENDED_SCHEMA } else { OrderProvisionRequested::SCHEMA_JSON };
        let schema = WriterSchema::parse("s", json).unwrap();
        let bytes = apply(sample_event(account).encode(&schema).unwrap(), &mutations);
        check_agreement(&schema, &bytes)?;
    }

    #[test]
    fn random_bytes_agree_and_never_panic(
        extended in proptest::bool::ANY,
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
    ) {
        let json = if extended { EXTENDED_SCHEMA } else { OrderProvisionRequested::SCHEMA_JSON };
        let schema = WriterSchema::parse("s", json).unwrap();
        check_agreement(&schema, &bytes)?;
    }
}
