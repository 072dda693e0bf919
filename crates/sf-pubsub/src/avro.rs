//! Avro binary decoding against a writer schema.
//!
//! Two paths share one strict reader ([`Cursor`]): every read is bounds-checked, varints are
//! limited to their width, strings must be UTF-8, union and enum indexes must exist, and a datum
//! must end exactly at the end of the payload. apache-avro alone can turn truncated or garbage
//! input into nulls instead of an error, so the generic path first walks the payload with the same checks.
//!
//! - the compiled plan ([`OrderPlan`]): built once per writer schema, it reads the fields of
//!   `OrderProvisionRequested__e` straight into borrowed slices and skips everything else;
//! - the generic path: apache-avro's `Value`, for tools that print any event.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, UnionSchema};

use crate::{Error, OrderProvisionRequested, Result};

/// A parsed Avro writer schema, with what decoding needs prepared once.
#[derive(Debug)]
pub struct WriterSchema {
    id: String,
    json: String,
    schema: Schema,
    walker: Option<Skip>,
    order_plan: std::result::Result<OrderPlan, PlanError>,
}

impl WriterSchema {
    /// Parses `schema_json` (the `SchemaInfo.schema_json` of `schema_id`).
    pub fn parse(schema_id: &str, schema_json: &str) -> Result<Self> {
        let schema = Schema::parse_str(schema_json).map_err(|err| Error::Schema {
            schema_id: schema_id.to_owned(),
            reason: err.to_string(),
        })?;
        let walker = Skip::compile(&schema, &mut HashMap::new()).ok();
        let order_plan = OrderPlan::compile(&schema);
        Ok(WriterSchema {
            id: schema_id.to_owned(),
            json: schema_json.to_owned(),
            schema,
            walker,
            order_plan,
        })
    }

    /// The schema id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The schema as JSON, as received.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The parsed apache-avro schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The fingerprint Salesforce-style ids are derived from: the Rabin (CRC-64-AVRO)
    /// fingerprint of the canonical form, base64url without padding. The sandbox uses it as the
    /// schema id.
    pub fn fingerprint_id(schema: &Schema) -> String {
        use base64::Engine as _;
        let fp = schema.fingerprint::<apache_avro::rabin::Rabin>();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fp.bytes)
    }

    /// Decodes `payload` with apache-avro into a generic value, strictly: a truncated payload,
    /// trailing bytes or a value that does not fit the schema are errors, never nulls.
    pub fn decode_value(&self, payload: &[u8]) -> Result<apache_avro::types::Value> {
        if let Some(walker) = &self.walker {
            let mut cur = Cursor::new(payload);
            walker.skip(&mut cur)?;
            cur.finish()?;
        }
        let mut reader = payload;
        let value =
            apache_avro::from_avro_datum(&self.schema, &mut reader, None).map_err(|err| {
                Error::MalformedPayload {
                    offset: payload.len() - reader.len(),
                    reason: err.to_string(),
                }
            })?;
        if !reader.is_empty() {
            return Err(Error::MalformedPayload {
                offset: payload.len() - reader.len(),
                reason: format!("{} trailing bytes after the datum", reader.len()),
            });
        }
        if !value.validate(&self.schema) {
            return Err(Error::MalformedPayload {
                offset: payload.len(),
                reason: "decoded value does not match the schema".into(),
            });
        }
        Ok(value)
    }

    /// Encodes a generic value with this schema.
    pub fn encode_value(&self, value: apache_avro::types::Value) -> Result<Vec<u8>> {
        apache_avro::to_avro_datum(&self.schema, value).map_err(|err| Error::Encode {
            schema_id: self.id.clone(),
            reason: err.to_string(),
        })
    }

    pub(crate) fn order_plan(&self) -> Result<&OrderPlan> {
        self.order_plan.as_ref().map_err(|e| e.to_error())
    }
}

/// A strict reader over one Avro binary datum.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn fail(&self, reason: &str) -> Error {
        Error::MalformedPayload {
            offset: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Error::MalformedPayload {
                offset: self.pos,
                reason: format!("{} trailing bytes after the datum", self.remaining()),
            })
        }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.fail("unexpected end of payload")),
        }
    }

    /// A zig-zag varint `long` (at most 10 bytes).
    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(self.fail("varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    /// A zig-zag varint `int`.
    #[inline]
    pub(crate) fn int(&mut self) -> Result<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.fail("int out of range"))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.fail("length runs past the end of payload"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[inline]
    fn len_prefix(&mut self) -> Result<usize> {
        let len = self.long()?;
        usize::try_from(len).map_err(|_| self.fail("negative length"))
    }

    /// Avro `bytes`.
    #[inline]
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len_prefix()?;
        self.take(n)
    }

    /// Avro `string` (UTF-8 checked).
    #[inline]
    pub(crate) fn str(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let raw = self.bytes()?;
        std::str::from_utf8(raw).map_err(|_| Error::MalformedPayload {
            offset: start,
            reason: "string is not UTF-8".into(),
        })
    }

    #[inline]
    fn boolean(&mut self) -> Result<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.fail("boolean byte is neither 0 nor 1")),
        }
    }

    /// A union or enum index below `n`.
    #[inline]
    pub(crate) fn index(&mut self, n: usize) -> Result<usize> {
        let i = self.long()?;
        match usize::try_from(i) {
            Ok(i) if i < n => Ok(i),
            _ => Err(self.fail("union or enum index out of range")),
        }
    }

    /// A block count of an array or map; `None` at the end marker.
    fn block(&mut self) -> Result<Option<usize>> {
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let count = if count < 0 {
            let _byte_size = self.long()?;
            count
                .checked_neg()
                .ok_or_else(|| self.fail("bad block count"))?
        } else {
            count
        };
        let count = usize::try_from(count).map_err(|_| self.fail("bad block count"))?;
        // Every item takes at least one byte except null-only ones; bound the loop either way.
        if count > self.remaining().saturating_add(1024) {
            return Err(self.fail("block count exceeds the payload"));
        }
        Ok(Some(count))
    }
}

/// How to step over (and validate) one value of a schema.
#[derive(Debug, Clone)]
pub(crate) enum Skip {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(usize),
    Union(Vec<Skip>),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Record(Vec<Skip>),
}

impl Skip {
    /// Compiles a schema; named types are remembered for later `Ref`s. Recursive types are not
    /// supported (Salesforce never sends them) and make the walker unavailable.
    fn compile(
        schema: &Schema,
        names: &mut HashMap<String, Skip>,
    ) -> std::result::Result<Skip, ()> {
        let named = |name: &Name, skip: Skip, names: &mut HashMap<String, Skip>| {
            names.insert(name.fullname(None), skip.clone());
            names.insert(name.name.clone(), skip.clone());
            skip
        };
        Ok(match schema {
            Schema::Null => Skip::Null,
            Schema::Boolean => Skip::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Skip::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Long,
            Schema::Float => Skip::Float,
            Schema::Double => Skip::Double,
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => Skip::Bytes,
            Schema::String => Skip::String,
            Schema::Duration => Skip::Fixed(12),
            Schema::Decimal(d) => Skip::compile(&d.inner, names)?,
            Schema::Fixed(f) => named(&f.name, Skip::Fixed(f.size), names),
            Schema::Enum(e) => named(&e.name, Skip::Enum(e.symbols.len()), names),
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(|s| Skip::compile(s, names))
                    .collect::<std::result::Result<_, _>>()?,
            ),
            Schema::Array(a) => Skip::Array(Box::new(Skip::compile(&a.items, names)?)),
            Schema::Map(m) => Skip::Map(Box::new(Skip::compile(&m.types, names)?)),
            Schema::Record(r) => {
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Skip::compile(&f.schema, names))
                    .collect::<std::result::Result<_, _>>()?;
                named(&r.name, Skip::Record(fields), names)
            }
            Schema::Ref { name } => names
                .get(&name.fullname(None))
                .or_else(|| names.get(&name.name))
                .cloned()
                .ok_or(())?,
        })
    }

    /// Steps over one value, validating it.
    pub(crate) fn skip(&self, cur: &mut Cursor<'_>) -> Result<()> {
        match self {
            Skip::Null => {}
            Skip::Boolean => {
                cur.boolean()?;
            }
            Skip::Int => {
                cur.int()?;
            }
            Skip::Long => {
                cur.long()?;
            }
            Skip::Float => {
                cur.take(4)?;
            }
            Skip::Double => {
                cur.take(8)?;
            }
            Skip::Bytes => {
                cur.bytes()?;
            }
            Skip::String => {
                cur.str()?;
            }
            Skip::Fixed(n) => {
                cur.take(*n)?;
            }
            Skip::Enum(n) => {
                cur.index(*n)?;
            }
            Skip::Union(branches) => {
                let i = cur.index(branches.len())?;
                branches[i].skip(cur)?;
            }
            Skip::Array(items) => {
                while let Some(n) = cur.block()? {
                    for _ in 0..n {
                        items.skip(cur)?;
                    }
                }
            }
            Skip::Map(values) => {
                while let Some(n) = cur.block()? {
                    for _ in 0..n {
                        cur.str()?;
                        values.skip(cur)?;
                    }
                }
            }
            Skip::Record(fields) => {
                for f in fields {
                    f.skip(cur)?;
                }
            }
        }
        Ok(())
    }
}

/// Fields of `OrderProvisionRequested__e` the typed record reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    CreatedDate,
    CreatedById,
    OrderId,
    CustomerNumber,
    AccountId,
}

impl Slot {
    const ALL: [(Slot, &'static str); 5] = [
        (Slot::CreatedDate, "CreatedDate"),
        (Slot::CreatedById, "CreatedById"),
        (Slot::OrderId, OrderProvisionRequested::ORDER_ID_FIELD),
        (
            Slot::CustomerNumber,
            OrderProvisionRequested::CUSTOMER_NUMBER_FIELD,
        ),
        (Slot::AccountId, OrderProvisionRequested::ACCOUNT_ID_FIELD),
    ];

    fn field(self) -> &'static str {
        match self {
            Slot::CreatedDate => "CreatedDate",
            Slot::CreatedById => "CreatedById",
            Slot::OrderId => OrderProvisionRequested::ORDER_ID_FIELD,
            Slot::CustomerNumber => OrderProvisionRequested::CUSTOMER_NUMBER_FIELD,
            Slot::AccountId => OrderProvisionRequested::ACCOUNT_ID_FIELD,
        }
    }
}

/// One step of the compiled plan.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A `long` (or `int`) into `CreatedDate`.
    Long { int: bool },
    /// A `string` into a slot.
    Str(Slot),
    /// A union with a null branch and a string branch into a slot.
    NullableStr {
        slot: Slot,
        null: usize,
        string: usize,
        branches: usize,
    },
    /// Anything else: step over it.
    Skip(Skip),
}

/// The compiled reading plan of one writer schema for `OrderProvisionRequested`.
#[derive(Debug, Clone)]
pub(crate) struct OrderPlan {
    pub(crate) ops: Vec<Op>,
}

/// Why a writer schema cannot give an `OrderProvisionRequested` (kept to answer every event).
#[derive(Debug, Clone)]
enum PlanError {
    NotARecord(String),
    Missing(&'static str),
    Mistyped {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    Unsupported(String),
}

impl PlanError {
    fn to_error(&self) -> Error {
        match self {
            PlanError::NotARecord(found) => Error::MistypedField {
                field: "(top level)",
                expected: "record",
                found: found.clone(),
            },
            PlanError::Missing(field) => Error::MissingField { field },
            PlanError::Mistyped {
                field,
                expected,
                found,
            } => Error::MistypedField {
                field,
                expected,
                found: found.clone(),
            },
            PlanError::Unsupported(what) => Error::Schema {
                schema_id: String::new(),
                reason: what.clone(),
            },
        }
    }
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => {
            let parts: Vec<String> = u.variants().iter().map(type_name).collect();
            format!("[{}]", parts.join(","))
        }
        other => {
            let kind: apache_avro::schema::SchemaKind = other.into();
            format!("{kind:?}").to_lowercase()
        }
    }
}

fn nullable_string(u: &UnionSchema) -> Option<(usize, usize)> {
    let v = u.variants();
    if v.len() != 2 {
        return None;
    }
    match (&v[0], &v[1]) {
        (Schema::Null, Schema::String) => Some((0, 1)),
        (Schema::String, Schema::Null) => Some((1, 0)),
        _ => None,
    }
}

impl OrderPlan {
    fn compile(schema: &Schema) -> std::result::Result<OrderPlan, PlanError> {
        let Schema::Record(record) = schema else {
            return Err(PlanError::NotARecord(type_name(schema)));
        };
        let mut names = HashMap::new();
        let mut seen = [false; 5];
        let mut ops = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            let slot = Slot::ALL
                .iter()
                .position(|(_, name)| *name == f.name)
                .map(|i| (i, Slot::ALL[i].0));
            let op = match slot {
                None => Op::Skip(Skip::compile(&f.schema, &mut names).map_err(|()| {
                    PlanError::Unsupported(format!("field {} has a recursive type", f.name))
                })?),
                Some((i, slot)) => {
                    seen[i] = true;
                    match (slot, &f.schema) {
                        (Slot::CreatedDate, Schema::Long | Schema::TimestampMillis) => {
                            Op::Long { int: false }
                        }
                        (Slot::CreatedDate, Schema::Int) => Op::Long { int: true },
                        (Slot::CreatedDate, other) => {
                            return Err(PlanError::Mistyped {
                                field: slot.field(),
                                expected: "long",
                                found: type_name(other),
                            });
                        }
                        (_, Schema::String) => Op::Str(slot),
                        (_, Schema::Union(u)) if nullable_string(u).is_some() => {
                            let (null, string) = nullable_string(u).unwrap_or((0, 1));
                            Op::NullableStr {
                                slot,
                                null,
                                string,
                                branches: 2,
                            }
                        }
                        (_, other) => {
                            return Err(PlanError::Mistyped {
                                field: slot.field(),
                                expected: "string or [\"null\",\"string\"]",
                                found: type_name(other),
                            });
                        }
                    }
                }
            };
            // Register named types even inside read fields, for later refs.
            let _ = Skip::compile(&f.schema, &mut names);
            ops.push(op);
        }
        for (i, (slot, _)) in Slot::ALL.iter().enumerate() {
            if !seen[i] && *slot != Slot::AccountId {
                return Err(PlanError::Missing(slot.field()));
            }
        }
        Ok(OrderPlan { ops })
    }
}

/// The fields of one event, borrowed from the payload.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderFields<'a> {
    pub(crate) created_date: Option<i64>,
    pub(crate) created_by_id: Option<&'a str>,
    pub(crate) order_id: Option<&'a str>,
    pub(crate) customer_number: Option<&'a str>,
    pub(crate) account_id: Option<&'a str>,
}

impl OrderPlan {
    /// Runs the plan over a payload; fails on any malformed or trailing byte.
    #[inline]
    pub(crate) fn read<'a>(&self, payload: &'a [u8]) -> Result<OrderFields<'a>> {
        let mut cur = Cursor::new(payload);
        let mut out = OrderFields::default();
        for op in &self.ops {
            match op {
                Op::Long { int } => {
                    out.created_date = Some(if *int {
                        i64::from(cur.int()?)
                    } else {
                        cur.long()?
                    });
                }
                Op::Str(slot) => {
                    let s = cur.str()?;
                    out.set(*slot, Some(s));
                }
                Op::NullableStr {
                    slot,
                    null,
                    string,
                    branches,
                } => {
                    let i = cur.index(*branches)?;
                    if i == *string {
                        let s = cur.str()?;
                        out.set(*slot, Some(s));
                    } else {
                        debug_assert_eq!(i, *null);
                        out.set(*slot, None);
                    }
                }
                Op::Skip(skip) => skip.skip(&mut cur)?,
            }
        }
        cur.finish()?;
        Ok(out)
    }
}

impl<'a> OrderFields<'a> {
    #[inline]
    fn set(&mut self, slot: Slot, value: Option<&'a str>) {
        match slot {
            Slot::CreatedById => self.created_by_id = value,
            Slot::OrderId => self.order_id = value,
            Slot::CustomerNumber => self.customer_number = value,
            Slot::AccountId => self.account_id = value,
            Slot::CreatedDate => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn varints_are_bounded() {
        // 1 zig-zag encoded, then an 11-byte varint.
        let mut c = Cursor::new(&[0x02]);
        assert_eq!(c.long().unwrap(), 1);
        let long = [0xff; 11];
        assert!(Cursor::new(&long).long().is_err());
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Cursor::new(&max).long().unwrap(), i64::MAX);
        let min = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Cursor::new(&min).long().unwrap(), i64::MIN);
        assert!(Cursor::new(&[0x80]).long().is_err());
    }

    #[test]
    fn strings_are_bounds_checked() {
        assert!(Cursor::new(&[0x0a, b'a']).str().is_err());
        assert!(Cursor::new(&[0x01]).str().is_err());
        assert!(Cursor::new(&[0x02, 0xff]).str().is_err());
        assert_eq!(Cursor::new(&[0x02, b'a']).str().unwrap(), "a");
    }
}
