//! Normalise + resolve + decide arbitrary bytes as `path[?query]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kubegate_policy::fuzzing::resolve_path(data);
});
