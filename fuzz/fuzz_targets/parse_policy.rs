//! Load arbitrary text as a policy, then decide a few requests with it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kubegate_policy::fuzzing::parse_policy(data);
});
