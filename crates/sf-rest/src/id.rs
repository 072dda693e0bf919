//! Salesforce record ids: 15 case-sensitive alphanumerics, or 18 with a checksum suffix.

use std::fmt;

use crate::{Error, Result};

/// A validated Salesforce record id (15 or 18 characters). Only an `OrderId` goes into SOQL or
/// a URL, so nothing else can change a query's meaning.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(String);

impl OrderId {
    /// Checks `id`: 15 or 18 ASCII alphanumerics, and for 18 characters a suffix that matches
    /// the checksum of the first 15.
    pub fn parse(id: &str) -> Result<Self> {
        let reason = if !matches!(id.len(), 15 | 18) {
            Some("must be 15 or 18 characters")
        } else if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Some("must be ascii letters and digits only")
        } else if id.len() == 18 && id[15..] != checksum(&id[..15]) {
            Some("the 3-character suffix does not match the id's checksum")
        } else {
            None
        };
        match reason {
            None => Ok(Self(id.to_owned())),
            Some(reason) => Err(Error::InvalidId {
                id: printable(id),
                reason,
            }),
        }
    }

    /// The id as given (15 or 18 characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 18-character form.
    pub fn to_18(&self) -> String {
        if self.0.len() == 18 {
            self.0.clone()
        } else {
            format!("{}{}", self.0, checksum(&self.0))
        }
    }

    /// Whether both ids name the same record (Salesforce compares the 15-character form).
    pub fn same_record(&self, other: &OrderId) -> bool {
        self.0[..15] == other.0[..15]
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for OrderId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl AsRef<str> for OrderId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The checksum suffix of a 15-character id: for each 5-character chunk, a bit per uppercase
/// letter, as an index into `A..Z0..5`.
pub(crate) fn checksum(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            char::from(ALPHABET[bits & 31])
        })
        .collect()
}

/// An id fit for an error message: escaped, at most 40 characters.
fn printable(id: &str) -> String {
    let escaped: String = id.escape_debug().collect();
    if escaped.chars().count() > 40 {
        let cut: String = escaped.chars().take(40).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn accepts_real_ids_and_checks_the_suffix() {
        let id = OrderId::parse("001A0000006Vm9rIAC").unwrap();
        assert_eq!(id.to_18(), "001A0000006Vm9rIAC");
        let short = OrderId::parse("001A0000006Vm9r").unwrap();
        assert_eq!(short.to_18(), "001A0000006Vm9rIAC");
        assert!(short.same_record(&id));
        assert_eq!(checksum("003A0000005QB3A"), "IAW");
        assert!(OrderId::parse("001A0000006Vm9rIAD").is_err());
    }

    #[test]
    fn rejects_anything_else_before_it_reaches_soql() {
        for bad in [
            "",
            "x' OR Id != '",
            "801000000000001' OR Id != '",
            "80100000000000 ",
            "80100000000000'",
            "8010000000000011",
            "801000000000001AA%",
            "801\u{e9}0000000000",
        ] {
            let err = OrderId::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidId { .. }), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn long_bad_ids_are_truncated_in_errors() {
        let text = OrderId::parse(&"a'".repeat(100)).unwrap_err().to_string();
        assert!(text.len() < 200, "{text}");
    }
}
