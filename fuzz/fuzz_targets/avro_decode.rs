//! Avro payloads of `OrderProvisionRequested__e`: the typed and the generic decoder never
//! panic, agree on whether the bytes are a datum, and read the same values.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sf_pubsub::{Error, GenericRecord, OrderProvisionRequested, Record, WriterSchema};

fn schema() -> &'static WriterSchema {
    static SCHEMA: OnceLock<WriterSchema> = OnceLock::new();
    SCHEMA.get_or_init(
        || match WriterSchema::parse("fuzz", OrderProvisionRequested::SCHEMA_JSON) {
            Ok(schema) => schema,
            Err(err) => panic!("the standard schema parses: {err}"),
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let schema = schema();
    let typed = OrderProvisionRequested::decode(schema, data);
    let generic = GenericRecord::decode(schema, data);
    let typed_datum_ok = match &typed {
        Ok(_) | Err(Error::MissingField { .. }) => true,
        Err(Error::MalformedPayload { .. }) => false,
        Err(other) => panic!("unexpected error kind: {other:?}"),
    };
    assert_eq!(typed_datum_ok, generic.is_ok(), "{typed:?} vs {generic:?}");
    if let (Ok(event), Ok(record)) = (&typed, &generic) {
        let json = record.to_json();
        assert_eq!(json["OrderId__c"], event.order_id.as_str());
        assert_eq!(json["CustomerNumber__c"], event.customer_number.as_str());
        assert_eq!(json["CreatedDate"], event.created_date);
    }
});
