//! Published test vectors: AES-256-GCM from NIST CAVP (`gcmEncryptExtIV256.rsp`) and McGrew &
//! Viega's GCM paper (test case 16), PBKDF2-HMAC-SHA256 from RFC 7914 §11 and the RFC 6070
//! cases recomputed with SHA-256.

use field_crypto::primitives::{aes256gcm_open, aes256gcm_seal, pbkdf2_sha256};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().unwrap()
}

fn check_gcm(key: &str, iv: &str, pt: &str, aad: &str, ct: &str, tag: &str) {
    let key = arr::<32>(key);
    let iv = arr::<12>(iv);
    let expected = [h(ct), h(tag)].concat();
    let sealed = aes256gcm_seal(&key, &iv, &h(aad), &h(pt));
    assert_eq!(hex::encode(&sealed), hex::encode(&expected));
    let opened = aes256gcm_open(&key, &iv, &h(aad), &expected).unwrap();
    assert_eq!(&opened[..], &h(pt)[..]);
    // The same vector with one bit of the tag flipped must not open.
    let mut bad = expected.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(aes256gcm_open(&key, &iv, &h(aad), &bad).is_err());
}

#[test]
fn nist_cavp_aes256gcm_with_aad() {
    check_gcm(
        "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
        "ac93a1a6145299bde902f21a",
        "2d71bcfa914e4ac045b2aa60955fad24",
        "1e0889016f67601c8ebea4943bc23ad6",
        "8995ae2e6df3dbf96fac7b7137bae67f",
        "eca5aa77d51d4a0a14d9c51e1da474ab",
    );
}

#[test]
fn nist_cavp_aes256gcm_without_aad() {
    check_gcm(
        "31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22",
        "0d18e06c7c725ac9e362e1ce",
        "2db5168e932556f8089a0622981d017d",
        "",
        "fa4362189661d163fcd6a56d8bf0405a",
        "d636ac1bbedd5cc3ee727dc2ab4a9489",
    );
}

#[test]
fn mcgrew_viega_test_case_16() {
    check_gcm(
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    );
}

fn check_pbkdf2(password: &str, salt: &str, iterations: u32, expected: &str) {
    let mut out = vec![0u8; expected.len() / 2];
    pbkdf2_sha256(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    assert_eq!(
        hex::encode(out),
        expected,
        "P={password:?} S={salt:?} c={iterations}"
    );
}

#[test]
fn rfc7914_pbkdf2_hmac_sha256() {
    check_pbkdf2(
        "passwd",
        "salt",
        1,
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
    );
    check_pbkdf2(
        "Password",
        "NaCl",
        80000,
        "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d",
    );
}

#[test]
fn pbkdf2_sha256_rfc6070_analogues() {
    for (c, want) in [
        (
            1,
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
        ),
        (
            2,
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43",
        ),
        (
            4096,
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
        ),
        (
            600_000,
            "669cfe52482116fda1aa2cbe409b2f56c8e4563752b7a28f6eaab614ee005178",
        ),
    ] {
        check_pbkdf2("password", "salt", c, want);
    }
}
