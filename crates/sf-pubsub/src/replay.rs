//! Where a subscription starts: `LATEST`, `EARLIEST` or `CUSTOM:<base64 replay id>`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::Error;
use crate::proto::ReplayPreset;

/// Start position of a subscription. Replay ids are opaque bytes, kept verbatim.
#[derive(Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// New events only.
    Latest,
    /// The earliest retained event.
    Earliest,
    /// After the event with this replay id (exclusive).
    Custom(Vec<u8>),
}

impl ReplayStart {
    /// The preset and replay id to put into the first `FetchRequest`.
    pub fn to_wire(&self) -> (ReplayPreset, Vec<u8>) {
        match self {
            ReplayStart::Latest => (ReplayPreset::Latest, Vec::new()),
            ReplayStart::Earliest => (ReplayPreset::Earliest, Vec::new()),
            ReplayStart::Custom(id) => (ReplayPreset::Custom, id.clone()),
        }
    }
}

impl fmt::Display for ReplayStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayStart::Latest => f.write_str("LATEST"),
            ReplayStart::Earliest => f.write_str("EARLIEST"),
            ReplayStart::Custom(id) => write!(f, "CUSTOM:{}", STANDARD.encode(id)),
        }
    }
}

impl fmt::Debug for ReplayStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ReplayStart {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("LATEST") {
            return Ok(ReplayStart::Latest);
        }
        if s.eq_ignore_ascii_case("EARLIEST") {
            return Ok(ReplayStart::Earliest);
        }
        if let Some(b64) = s
            .strip_prefix("CUSTOM:")
            .or_else(|| s.strip_prefix("custom:"))
        {
            let id = STANDARD.decode(b64.trim()).map_err(|_| Error::Config {
                what: "CUSTOM replay id is not valid base64".into(),
            })?;
            if id.is_empty() {
                return Err(Error::Config {
                    what: "CUSTOM replay id is empty".into(),
                });
            }
            return Ok(ReplayStart::Custom(id));
        }
        Err(Error::Config {
            what: format!("replay must be LATEST, EARLIEST or CUSTOM:<base64>, got {s:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(
            "LATEST".parse::<ReplayStart>().unwrap(),
            ReplayStart::Latest
        );
        assert_eq!(
            "earliest".parse::<ReplayStart>().unwrap(),
            ReplayStart::Earliest
        );
        let custom: ReplayStart = "CUSTOM:AAAAAAAQ200AAA==".parse().unwrap();
        assert_eq!(
            custom,
            ReplayStart::Custom(vec![0, 0, 0, 0, 0, 16, 219, 77, 0, 0])
        );
        assert_eq!(custom.to_string(), "CUSTOM:AAAAAAAQ200AAA==");
        assert_eq!(
            custom.to_wire(),
            (ReplayPreset::Custom, vec![0, 0, 0, 0, 0, 16, 219, 77, 0, 0])
        );
        assert!("CUSTOM:%%".parse::<ReplayStart>().is_err());
        assert!("CUSTOM:".parse::<ReplayStart>().is_err());
        assert!("-1".parse::<ReplayStart>().is_err());
    }
}
