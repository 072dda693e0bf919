//! The IP allowlist of the status API (`HTTP_ALLOWED_CIDRS`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::{Error, Result};

/// A set of CIDR networks a client address must fall into.
///
/// Parsed from a comma-separated list such as `127.0.0.0/8,::1/128`. Bare addresses mean a
/// single host (`/32` or `/128`), whitespace around entries is ignored, and empty entries are
/// skipped, so an empty or blank list is an allowlist that **denies everything**.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`, what a dual-stack socket reports for an IPv4
/// peer) are matched as the IPv4 address they carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpAllowlist {
    nets: Vec<IpNet>,
}

impl IpAllowlist {
    /// The default of `HTTP_ALLOWED_CIDRS`: loopback only.
    pub const DEFAULT: &'static str = "127.0.0.0/8,::1/128";

    /// Parses a comma-separated list of CIDR networks and bare addresses.
    ///
    /// # Errors
    /// [`Error::InvalidCidr`] naming the first entry that does not parse.
    pub fn parse(list: &str) -> Result<Self> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_entry)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { nets })
    }

    /// An allowlist that denies every address.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Builds an allowlist from networks already parsed.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().map(|net| net.trunc()).collect(),
        }
    }

    /// Whether `addr` is inside one of the networks.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let canonical = addr.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(&canonical) || net.contains(&addr))
    }

    /// The networks, in the order given.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// `true` when no address is allowed.
    pub fn is_deny_all(&self) -> bool {
        self.nets.is_empty()
    }
}

fn parse_entry(entry: &str) -> Result<IpNet> {
    let invalid = || Error::InvalidCidr {
        entry: entry.to_owned(),
    };
    if entry.contains('/') {
        // Host bits set (`10.1.2.3/8`) are accepted and cleared.
        IpNet::from_str(entry)
            .map(|net| net.trunc())
            .map_err(|_| invalid())
    } else {
        IpAddr::from_str(entry)
            .map(IpNet::from)
            .map_err(|_| invalid())
    }
}

impl FromStr for IpAllowlist {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for IpAllowlist {
    /// The canonical list form, which [`IpAllowlist::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_allows_loopback_only() {
        let list = IpAllowlist::parse(IpAllowlist::DEFAULT).unwrap();
        assert!(list.allows(ip("127.0.0.1")));
        assert!(list.allows(ip("127.255.0.9")));
        assert!(list.allows(ip("::1")));
        assert!(!list.allows(ip("10.0.0.1")));
        assert!(!list.allows(ip("::2")));
    }

    #[test]
    fn bare_addresses_are_single_hosts_and_whitespace_is_tolerated() {
        let list = IpAllowlist::parse(" 192.0.2.7 ,\t2001:db8::5 , ").unwrap();
        assert_eq!(list.to_string(), "192.0.2.7/32,2001:db8::5/128");
        assert!(list.allows(ip("192.0.2.7")));
        assert!(!list.allows(ip("192.0.2.8")));
        assert!(list.allows(ip("2001:db8::5")));
        assert!(!list.allows(ip("2001:db8::6")));
    }

    #[test]
    fn empty_list_denies_all() {
        for text in ["", "  ", ",", " , "] {
            let list = IpAllowlist::parse(text).unwrap();
            assert!(list.is_deny_all(), "{text:?}");
            assert!(!list.allows(ip("127.0.0.1")));
            assert!(!list.allows(ip("::1")));
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, bad) in [
            ("127.0.0.0/8,10.0.0.0/33", "10.0.0.0/33"),
            ("localhost", "localhost"),
            (" 10.0.0.0/8 , 300.1.1.1 ", "300.1.1.1"),
            ("::1/129", "::1/129"),
            ("10.0.0.0/", "10.0.0.0/"),
        ] {
            let err = IpAllowlist::parse(text).unwrap_err();
            assert!(err.is_config());
            match &err {
                Error::InvalidCidr { entry } => assert_eq!(entry, bad),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn host_bits_are_cleared() {
        let list = IpAllowlist::parse("10.1.2.3/8").unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8");
        assert!(list.allows(ip("10.200.0.1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_as_ipv4() {
        let list = IpAllowlist::parse("127.0.0.0/8").unwrap();
        assert!(list.allows(ip("::ffff:127.0.0.1")));
        assert!(!list.allows(ip("::ffff:10.0.0.1")));
        // A v6-only list does not match mapped v4 peers by accident ...
        let v6 = IpAllowlist::parse("::1/128").unwrap();
        assert!(!v6.allows(ip("::ffff:127.0.0.1")));
        // ... but an explicit mapped-range entry still matches the mapped form.
        let mapped = IpAllowlist::parse("::ffff:0:0/96").unwrap();
        assert!(mapped.allows(ip("::ffff:192.0.2.1")));
    }
}
