//! Instruction counts from valgrind's callgrind, for the benches that count instead of
//! timing (a count does not move with the machine's load).

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `exe args` under `valgrind --tool=callgrind`, collecting only inside `function`
/// (`--toggle-collect`), and returns the instructions counted there; `out` is the profile
/// file, left for `callgrind_annotate`. `None` when valgrind is not installed (said on
/// stderr, with what to install). Panics when the program fails under valgrind.
pub fn count(exe: &Path, function: &str, args: &[&str], out: &Path) -> Option<u64> {
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect={function}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(args)
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} {args:?} under valgrind: {s}", exe.display()),
        Err(e) => {
            eprintln!(
                "valgrind is not installed ({e}); install it (Debian: valgrind) to count instructions"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(out).expect("callgrind output");
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a totals line in callgrind's output");
    Some(total)
}
