//! Typed and generic records decoded from event payloads.

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::avro::WriterSchema;
use crate::{Error, Result};

/// Something an event payload decodes into, given the event's own writer schema.
pub trait Record: Sized + Send + 'static {
    /// Decodes one payload. Errors are values for that event, never panics.
    fn decode(schema: &WriterSchema, payload: &[u8]) -> Result<Self>;
}

/// The `OrderProvisionRequested__e` platform event the Flow publishes when an Order is
/// approved (README, "Running against a real org").
///
/// `OrderId__c` and `CustomerNumber__c` are required, `AccountId__c` is optional and unknown
/// extra fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderProvisionRequested {
    /// `CreatedDate`, epoch milliseconds.
    pub created_date: i64,
    /// `CreatedById`, the publishing user's id.
    pub created_by_id: String,
    /// `OrderId__c`, the 18-character Salesforce Order id.
    pub order_id: String,
    /// `CustomerNumber__c`.
    pub customer_number: String,
    /// `AccountId__c`, if set.
    pub account_id: Option<String>,
}

impl Record for OrderProvisionRequested {
    #[inline]
    fn decode(schema: &WriterSchema, payload: &[u8]) -> Result<Self> {
        let fields = schema.order_plan()?.read(payload)?;
        Ok(OrderProvisionRequested {
            created_date: fields.created_date.ok_or(Error::MissingField {
                field: "CreatedDate",
            })?,
            created_by_id: fields
                .created_by_id
                .ok_or(Error::MissingField {
                    field: "CreatedById",
                })?
                .to_owned(),
            order_id: fields
                .order_id
                .ok_or(Error::MissingField {
                    field: Self::ORDER_ID_FIELD,
                })?
                .to_owned(),
            customer_number: fields
                .customer_number
                .ok_or(Error::MissingField {
                    field: Self::CUSTOMER_NUMBER_FIELD,
                })?
                .to_owned(),
            account_id: fields.account_id.map(str::to_owned),
        })
    }
}

impl OrderProvisionRequested {
    /// `OrderId__c`: the Order's Id (required).
    pub const ORDER_ID_FIELD: &'static str = "OrderId__c";
    /// `CustomerNumber__c`: the Order's customer number (required).
    pub const CUSTOMER_NUMBER_FIELD: &'static str = "CustomerNumber__c";
    /// `AccountId__c`: the Order's Account Id (optional).
    pub const ACCOUNT_ID_FIELD: &'static str = "AccountId__c";
    /// The custom fields an event must carry: one missing makes the event a dead letter, so the
    /// publishing Flow has to set each of them.
    pub const REQUIRED_FIELDS: [&'static str; 2] =
        [Self::ORDER_ID_FIELD, Self::CUSTOMER_NUMBER_FIELD];
    /// Every custom field the record reads.
    pub const FIELDS: [&'static str; 3] = [
        Self::ORDER_ID_FIELD,
        Self::CUSTOMER_NUMBER_FIELD,
        Self::ACCOUNT_ID_FIELD,
    ];

    /// The standard writer schema of the event (as the sandbox publishes it).
    pub const SCHEMA_JSON: &'static str = r#"{"type":"record","name":"OrderProvisionRequested__e","namespace":"com.sforce.eventbus","fields":[{"name":"CreatedDate","type":"long","doc":"CreatedDate:DateTime"},{"name":"CreatedById","type":"string","doc":"CreatedBy:EntityId"},{"name":"OrderId__c","type":["null","string"],"doc":"Data:Text","default":null},{"name":"CustomerNumber__c","type":["null","string"],"doc":"Data:Text","default":null},{"name":"AccountId__c","type":["null","string"],"doc":"Data:Text","default":null}]}"#;

    /// Encodes the event with `schema` for publishing. Fields of the schema this type does not
    /// know get their null branch; a non-nullable unknown field is an error.
    pub fn encode(&self, schema: &WriterSchema) -> Result<Vec<u8>> {
        let fail = |reason: String| Error::Encode {
            schema_id: schema.id().to_owned(),
            reason,
        };
        let Schema::Record(record) = schema.schema() else {
            return Err(fail("schema is not a record".into()));
        };
        let mut fields = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            let text = match f.name.as_str() {
                "CreatedDate" => {
                    fields.push((f.name.clone(), Value::Long(self.created_date)));
                    continue;
                }
                "CreatedById" => Some(self.created_by_id.as_str()),
                Self::ORDER_ID_FIELD => Some(self.order_id.as_str()),
                Self::CUSTOMER_NUMBER_FIELD => Some(self.customer_number.as_str()),
                Self::ACCOUNT_ID_FIELD => self.account_id.as_deref(),
                _ => None,
            };
            let value = match (&f.schema, text) {
                (Schema::String, Some(s)) => Value::String(s.to_owned()),
                (Schema::Union(u), text) => {
                    let branch = |want: fn(&Schema) -> bool| {
                        u.variants()
                            .iter()
                            .position(want)
                            .and_then(|i| u32::try_from(i).ok())
                    };
                    match text {
                        Some(s) => match branch(|s| matches!(s, Schema::String)) {
                            Some(i) => Value::Union(i, Box::new(Value::String(s.to_owned()))),
                            None => {
                                return Err(fail(format!("field {} has no string branch", f.name)));
                            }
                        },
                        None => match branch(|s| matches!(s, Schema::Null)) {
                            Some(i) => Value::Union(i, Box::new(Value::Null)),
                            None => return Err(fail(format!("field {} is not nullable", f.name))),
                        },
                    }
                }
                _ => return Err(fail(format!("no value for field {}", f.name))),
            };
            fields.push((f.name.clone(), value));
        }
        schema.encode_value(Value::Record(fields))
    }
}

/// Any event, decoded with apache-avro's generic value (for `provisioner events tail`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenericRecord(pub Value);

impl Record for GenericRecord {
    fn decode(schema: &WriterSchema, payload: &[u8]) -> Result<Self> {
        schema.decode_value(payload).map(GenericRecord)
    }
}

impl GenericRecord {
    /// The record as JSON: records become objects, unions their chosen value, bytes arrays of
    /// numbers.
    pub fn to_json(&self) -> serde_json::Value {
        to_json(&self.0)
    }
}

fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => J::from(*i),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => J::from(*l),
        Value::Float(f) => J::from(f64::from(*f)),
        Value::Double(d) => J::from(*d),
        Value::Bytes(b) | Value::Fixed(_, b) => J::from(b.clone()),
        Value::String(s) | Value::Enum(_, s) => J::String(s.clone()),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => J::String(u.to_string()),
        other => J::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn standard() -> WriterSchema {
        WriterSchema::parse("std", OrderProvisionRequested::SCHEMA_JSON).unwrap()
    }

    fn sample() -> OrderProvisionRequested {
        OrderProvisionRequested {
            created_date: 1_700_000_000_000,
            created_by_id: "005xx000001X83aAAC".into(),
            order_id: "801xx000003GYkeAAG".into(),
            customer_number: "CUST-0042".into(),
            account_id: None,
        }
    }

    #[test]
    fn typed_and_generic_paths_agree() {
        let schema = standard();
        let bytes = sample().encode(&schema).unwrap();
        assert_eq!(
            OrderProvisionRequested::decode(&schema, &bytes).unwrap(),
            sample()
        );
        let json = GenericRecord::decode(&schema, &bytes).unwrap().to_json();
        assert_eq!(json["OrderId__c"], "801xx000003GYkeAAG");
        assert_eq!(json["AccountId__c"], serde_json::Value::Null);
        assert_eq!(json["CreatedDate"], 1_700_000_000_000_i64);
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors_on_both_paths() {
        let schema = standard();
        let bytes = sample().encode(&schema).unwrap();
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            assert!(
                OrderProvisionRequested::decode(&schema, part).is_err(),
                "typed, cut {cut}"
            );
            assert!(
                GenericRecord::decode(&schema, part).is_err(),
                "generic, cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            OrderProvisionRequested::decode(&schema, &longer),
            Err(Error::MalformedPayload { .. })
        ));
        assert!(matches!(
            GenericRecord::decode(&schema, &longer),
            Err(Error::MalformedPayload { .. })
        ));
    }

    #[test]
    fn missing_and_null_required_fields_are_named() {
        let schema = standard();
        let mut no_customer = sample();
        no_customer.customer_number = String::new();
        // Encode a null CustomerNumber__c by hand: the union's null branch.
        let bytes = {
            let mut b = Vec::new();
            b.extend_from_slice(&[0x80, 0xa0, 0xab, 0xfe, 0xf9, 0x62]); // 1700000000000
            b.push(2);
            b.push(b'x');
            b.extend_from_slice(&[2, 4, b'o', b'1']);
            b.push(0); // CustomerNumber__c = null
            b.push(0); // AccountId__c = null
            b
        };
        let err = OrderProvisionRequested::decode(&schema, &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingField {
                    field: "CustomerNumber__c"
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("CustomerNumber__c"));

        let without = r#"{"type":"record","name":"E","fields":[{"name":"CreatedDate","type":"long"},{"name":"CreatedById","type":"string"},{"name":"CustomerNumber__c","type":["null","string"]}]}"#;
        let s = WriterSchema::parse("x", without).unwrap();
        let err = OrderProvisionRequested::decode(&s, &[0, 0, 0]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingField {
                    field: "OrderId__c"
                }
            ),
            "{err}"
        );

        let mistyped = r#"{"type":"record","name":"E","fields":[{"name":"CreatedDate","type":"long"},{"name":"CreatedById","type":"string"},{"name":"OrderId__c","type":["null","double"]},{"name":"CustomerNumber__c","type":["null","string"]}]}"#;
        let s = WriterSchema::parse("x", mistyped).unwrap();
        let err = OrderProvisionRequested::decode(&s, &[0, 0, 0, 0]).unwrap_err();
        assert!(
            matches!(err, Error::MistypedField { field: "OrderId__c", ref found, .. } if found == "[null,double]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_of_every_kind_are_skipped() {
        let json = r#"{"type":"record","name":"E","namespace":"com.sforce.eventbus","fields":[
            {"name":"CreatedDate","type":"long"},
            {"name":"Extra_Num__c","type":["null","double"],"default":null},
            {"name":"CreatedById","type":"string"},
            {"name":"Flag__c","type":["null","boolean"],"default":null},
            {"name":"Tags","type":{"type":"array","items":"string"}},
            {"name":"Attrs","type":{"type":"map","values":"long"}},
            {"name":"Kind","type":{"type":"enum","name":"K","symbols":["A","B"]}},
            {"name":"Hash","type":{"type":"fixed","name":"H","size":4}},
            {"name":"Hash2","type":"H"},
            {"name":"OrderId__c","type":["null","string"],"default":null},
            {"name":"CustomerNumber__c","type":"string"}]}"#;
        let schema = WriterSchema::parse("x", json).unwrap();
        let value = Value::Record(vec![
            ("CreatedDate".into(), Value::Long(5)),
            (
                "Extra_Num__c".into(),
                Value::Union(1, Box::new(Value::Double(2.5))),
            ),
            ("CreatedById".into(), Value::String("u".into())),
            (
                "Flag__c".into(),
                Value::Union(1, Box::new(Value::Boolean(true))),
            ),
            (
                "Tags".into(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
            (
                "Attrs".into(),
                Value::Map([("k".to_owned(), Value::Long(7))].into_iter().collect()),
            ),
            ("Kind".into(), Value::Enum(1, "B".into())),
            ("Hash".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
            ("Hash2".into(), Value::Fixed(4, vec![5, 6, 7, 8])),
            (
                "OrderId__c".into(),
                Value::Union(1, Box::new(Value::String("o".into()))),
            ),
            ("CustomerNumber__c".into(), Value::String("c".into())),
        ]);
        let bytes = schema.encode_value(value).unwrap();
        let got = OrderProvisionRequested::decode(&schema, &bytes).unwrap();
        assert_eq!(
            got,
            OrderProvisionRequested {
                created_date: 5,
                created_by_id: "u".into(),
                order_id: "o".into(),
                customer_number: "c".into(),
                account_id: None,
            }
        );
        assert!(GenericRecord::decode(&schema, &bytes).is_ok());
    }
}
