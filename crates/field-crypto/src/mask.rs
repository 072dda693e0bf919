//! `Masked<T>`: PII that can be logged, because its `Debug` and `Display` only show a mask.
//!
//! Masking is decided by type, not by remembering to: wrap a value in [`Masked`] with the
//! masker that fits ([`Card`], [`Ssn`], [`Email`], [`Phone`], or [`Text`] for anything else)
//! and every `{}`/`{:?}` of it prints the mask. The value is reached only through
//! [`Masked::expose`].

use std::fmt;

/// How a kind of PII is shown in logs.
pub trait Mask {
    /// Writes the masked form; must not write the value.
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A PII value that prints only its mask.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Masked<T: Mask>(T);

impl<T: Mask> Masked<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Masked(value)
    }

    /// The value itself, for the code that really needs it (never for logging).
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: Mask> fmt::Debug for Masked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_masked(f)
    }
}

impl<T: Mask> fmt::Display for Masked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_masked(f)
    }
}

fn last_digits(value: &str, n: usize) -> Option<String> {
    let digits: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
    // Show the tail only when enough digits stay hidden.
    (digits.len() >= n * 2).then(|| digits[digits.len() - n..].iter().collect())
}

macro_rules! pii_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(pub String);

        impl From<&str> for $name {
            fn from(v: &str) -> Self {
                $name(v.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(v: String) -> Self {
                $name(v)
            }
        }
    };
}

pii_type!(
    /// A payment card number: shown as `****1234`.
    Card
);
pii_type!(
    /// A US social security number: shown as `***-**-1234`.
    Ssn
);
pii_type!(
    /// An email address: shown as `j***@example.com`.
    Email
);
pii_type!(
    /// A phone number: shown as `***-***-1234`.
    Phone
);
pii_type!(
    /// Any other personal text (names, addresses): shown as `[redacted N chars]`.
    Text
);

impl Mask for Card {
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match last_digits(&self.0, 4) {
            Some(tail) => write!(f, "****{tail}"),
            None => f.write_str("****"),
        }
    }
}

impl Mask for Ssn {
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match last_digits(&self.0, 4) {
            Some(tail) if self.0.chars().filter(char::is_ascii_digit).count() == 9 => {
                write!(f, "***-**-{tail}")
            }
            _ => f.write_str("***-**-****"),
        }
    }
}

impl Mask for Email {
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                let first: String = local.chars().take(1).collect();
                write!(f, "{first}***@{domain}")
            }
            _ => f.write_str("***@***"),
        }
    }
}

impl Mask for Phone {
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match last_digits(&self.0, 4) {
            Some(tail) => write!(f, "***-***-{tail}"),
            None => f.write_str("***-***-****"),
        }
    }
}

impl Mask for Text {
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted {} chars]", self.0.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both<T: Mask>(m: &Masked<T>) -> (String, String) {
        (format!("{m}"), format!("{m:?}"))
    }

    #[test]
    fn masks_by_type() {
        let cases: Vec<(String, String, &str)> = vec![
            {
                let (a, b) = both(&Masked::new(Card::from("4111 1111 1111 1234")));
                (a, b, "****1234")
            },
            {
                let (a, b) = both(&Masked::new(Ssn::from("123-45-6789")));
                (a, b, "***-**-6789")
            },
            {
                let (a, b) = both(&Masked::new(Email::from("jane.doe@example.com")));
                (a, b, "j***@example.com")
            },
            {
                let (a, b) = both(&Masked::new(Phone::from("+1 (555) 867-5309")));
                (a, b, "***-***-5309")
            },
            {
                let (a, b) = both(&Masked::new(Text::from("Jane Doe")));
                (a, b, "[redacted 8 chars]")
            },
        ];
        for (display, debug, want) in cases {
            assert_eq!(display, want);
            assert_eq!(debug, want);
        }
    }

    #[test]
    fn short_values_reveal_nothing() {
        assert_eq!(Masked::new(Card::from("1234")).to_string(), "****");
        assert_eq!(Masked::new(Ssn::from("12-34")).to_string(), "***-**-****");
        assert_eq!(Masked::new(Email::from("nobody")).to_string(), "***@***");
        assert_eq!(Masked::new(Phone::from("911")).to_string(), "***-***-****");
    }

    #[test]
    fn expose_gives_the_value() {
        let m = Masked::new(Email::from("a@b.c"));
        assert_eq!(m.expose().0, "a@b.c");
        assert_eq!(m.into_inner().0, "a@b.c");
    }
}
