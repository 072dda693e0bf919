//! The sandbox's PHP side: `$_POST` parsing, `unserialize` and `base64_decode` never panic,
//! and an `unserialize` failure points inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::whmcs::php;

fuzz_target!(|data: &[u8]| {
    let post = php::parse_form(data);
    for (key, _) in &post.0 {
        if let php::Key::Str(name) = key {
            assert!(
                !name.is_empty() && !name.contains('.') && !name.contains(' '),
                "{name:?}"
            );
        }
    }
    if let Err(err) = php::unserialize(data) {
        assert!(err.offset <= data.len(), "{err}");
    }
    let _ = php::decode_serialized_base64(data);
});
