//! The parser never panics: thousands of mutations of valid files (bytes flipped, cut,
//! duplicated, spliced from the other formats) give a `Config` or a `ConfigError`, with
//! every problem positioned inside the text. cargo-fuzz needs a nightly toolchain, which
//! this project's machines do not have; this bounded, seeded run is what stands in for it.

use meshless_config::{Config, Format};

const SEEDS: [(&str, Format); 3] = [
    (
        include_str!("../../examples/config/clients.yaml"),
        Format::Yaml,
    ),
    (
        include_str!("../../examples/config/clients.toml"),
        Format::Toml,
    ),
    (
        r#"{"clients": {"c": {"target": "dns:///x:1", "serviceConfig": {"methodConfig": [{"name": [{}], "timeout": "1s", "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 14]}}]}}}}"#,
        Format::Json,
    ),
];

/// SplitMix64, so the run is the same every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "'",
    "\n",
    "  ",
    "-",
    "${",
    "${X}",
    "${X:-",
    "&a",
    "*a",
    "!!str",
    "0",
    "-1",
    "1e999",
    "99999999999999999999999",
    "null",
    "true",
    "~",
    "#",
    "=",
    "[[",
    "\\u0000",
    "\t",
    "ms",
    "s",
    "µs",
    "maxAttempts",
    "name",
    "clients",
    "p95",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let end = (at + rng.below(16)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            1 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                bytes.splice(at..at, s.bytes());
            }
            2 if !bytes.is_empty() => {
                let from = rng.below(bytes.len());
                let end = (from + rng.below(32)).min(bytes.len());
                let piece: Vec<u8> = bytes[from..end].to_vec();
                bytes.splice(at..at, piece);
            }
            3 if at < bytes.len() => bytes[at] = rng.next() as u8,
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_files_give_errors_never_panics() {
    let mut rng = Rng(20261204);
    let env = |k: &str| (k == "X").then(|| "5s".to_owned());
    let (mut ok, mut errors) = (0, 0);
    for round in 0..3000 {
        let (seed, format) = SEEDS[round % SEEDS.len()];
        let text = mutate(&mut rng, seed);
        let result = std::panic::catch_unwind(|| Config::from_str_with_env(&text, format, &env));
        match result {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                errors += 1;
                // Line breaks as YAML counts them: CRLF, LF, or a lone CR.
                let lines = text
                    .replace("\r\n", "\n")
                    .replace('\r', "\n")
                    .matches('\n')
                    .count() as u32
                    + 1;
                for p in &e.problems {
                    assert!(p.pos.line <= lines, "position past the end: {p:?}\n{text}");
                    assert!(!p.message.is_empty());
                }
            }
            Err(_) => panic!("the parser panicked on (format {format:?}):\n{text}"),
        }
    }
    // Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert!(ok > 100 && errors > 1000, "{ok} valid, {errors} invalid");
}
