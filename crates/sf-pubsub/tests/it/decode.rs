//! Done when 4: the interop §4.2 vector, garbage payloads, strictness of both paths.

use sf_pubsub::{Error, GenericRecord, OrderProvisionRequested, Record, WriterSchema};

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
