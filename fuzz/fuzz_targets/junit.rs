//! JUnit XML reports, as a test's framework wrote them into its workspace: reading them must
//! never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = isotest_framework_reports::parse_junit(data);
});
