//! The manifest parser (OpenFaaS stack.yml and Knative Services, `${VAR}` substitution) on
//! arbitrary text: it must answer Ok or a ManifestError, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every variable is set to a short value, so that substitution paths run too.
    let env = |name: &str| (name.len() % 2 == 0).then(|| "v".to_string());
    let read_file = |path: &str| Err(format!("{path}: no files while fuzzing"));
    let _ = skyfri_core::manifest::parse("fuzz.yml", text, &env, &read_file);
});
