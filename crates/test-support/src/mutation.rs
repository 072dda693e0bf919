//! Byte-level edits of valid inputs, for robustness properties: a parser fed a valid input
//! with a few random edits must answer with a value or a typed error, never a panic.
//!
//! Each grammar has its interesting bytes (JSON punctuation, PHP `serialize()` markers, Avro
//! varint edges), so the caller picks what [`Mutation::Set`] and [`Mutation::Insert`] write:
//!
//! ```
//! use proptest::prelude::*;
//! use proptest::test_runner::TestRunner;
//! use test_support::mutation::{apply, mutation};
//!
//! let edits = prop::collection::vec(mutation(any::<u8>(), Just(b'{')), 1..6);
//! TestRunner::default()
//!     .run(&edits, |edits| {
//!         let out = apply(br#"{"a":1}"#.to_vec(), &edits);
//!         prop_assert!(out.len() <= 7 + edits.len());
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

use proptest::prelude::*;

/// One byte-level edit; positions wrap around the current length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips bit `.1` (0..8) of the byte at `.0`.
    Flip(usize, u8),
    /// Overwrites the byte at `.0`.
    Set(usize, u8),
    /// Inserts a byte before position `.0` (or at the end).
    Insert(usize, u8),
    /// Removes the byte at `.0`.
    Delete(usize),
    /// Keeps the first `.0` bytes.
    Truncate(usize),
}

/// Edits of every kind, each equally likely; `set` and `insert` choose the bytes written.
pub fn mutation<S, I>(set: S, insert: I) -> impl Strategy<Value = Mutation>
where
    S: Strategy<Value = u8> + 'static,
    I: Strategy<Value = u8> + 'static,
{
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (any::<usize>(), set).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), insert).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// `bytes` with `mutations` applied in order (an edit of an empty input that needs a byte to
/// edit does nothing).
pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Flip(i, bit) if len > 0 => bytes[i % len] ^= 1 << (bit % 8),
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_edit_does_what_it_says() {
        let base = b"abc".to_vec();
        assert_eq!(apply(base.clone(), &[Mutation::Flip(4, 0)]), b"acc");
        assert_eq!(apply(base.clone(), &[Mutation::Set(0, b'x')]), b"xbc");
        assert_eq!(apply(base.clone(), &[Mutation::Insert(3, b'x')]), b"abcx");
        assert_eq!(apply(base.clone(), &[Mutation::Delete(5)]), b"ab");
        assert_eq!(apply(base.clone(), &[Mutation::Truncate(1)]), b"a");
        assert_eq!(apply(Vec::new(), &[Mutation::Flip(0, 1)]), b"");
    }
}
