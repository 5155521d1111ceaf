//! Any bytes, read as a config file in each format: a `Config` or a `ConfigError`, never a
//! panic, and every problem positioned inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshless_config::{Config, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Line breaks as YAML counts them: CRLF, LF, or a lone CR.
    let lines = text.replace("\r\n", "\n").replace('\r', "\n").matches('\n').count() as u32 + 1;
    for format in [Format::Yaml, Format::Toml, Format::Json] {
        if let Err(e) = Config::from_str_with_env(text, format, &|_| None) {
            for p in &e.problems {
                assert!(p.pos.line <= lines, "{p:?}");
            }
        }
    }
});
