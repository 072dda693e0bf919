//! `HTTP_ALLOWED_CIDRS` through the public API.

use std::net::IpAddr;

use security::{Error, IpAllowlist};

fn check(list: &str, cases: &[(&str, bool)]) {
    let allow = IpAllowlist::parse(list).unwrap();
    for &(addr, expected) in cases {
        let ip: IpAddr = addr.parse().unwrap();
        assert_eq!(allow.allows(ip), expected, "{list}: {addr}");
    }
}

#[test]
fn ipv4_networks() {
    check(
        "10.0.0.0/8, 192.168.1.0/24,203.0.113.7",
        &[
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("192.168.1.200", true),
            ("192.168.2.1", false),
            ("203.0.113.7", true),
            ("203.0.113.8", false),
        ],
    );
}

#[test]
fn ipv6_networks() {
    check(
        "2001:db8::/32, ::1/128, fe80::1",
        &[
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
            ("::1", true),
            ("fe80::1", true),
            ("fe80::2", false),
            ("127.0.0.1", false),
        ],
    );
}

#[test]
fn mapped_ipv6_peers_match_ipv4_entries() {
    check(
        "127.0.0.0/8,::1/128",
        &[
            ("::ffff:127.0.0.1", true),
            ("::ffff:127.1.2.3", true),
            ("::ffff:192.0.2.1", false),
            ("::ffff:7f00:1", true),
        ],
    );
}

#[test]
fn empty_denies_all_and_bad_entries_are_named() {
    check("", &[("127.0.0.1", false), ("::1", false)]);
    let err = IpAllowlist::parse("127.0.0.0/8, 10.0.0.0/40 ,::1").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidCidr { entry } if entry == "10.0.0.0/40"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "invalid allowlist entry `10.0.0.0/40`: expected a CIDR network (10.0.0.0/8) or an IP address"
    );
}
