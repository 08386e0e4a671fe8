//! Configuration loading: `Config::parse_str` on any text, with a few variables set (one
//! of them spanning two lines). Beyond "no panic": every error names a line of the file
//! (but for an alias bomb, which is about the whole document), and a configuration that
//! loads passes its own validation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::Config;

fn env(name: &str) -> Option<String> {
    match name {
        "SET" => Some("value".to_owned()),
        "PORT" => Some("7000".to_owned()),
        "EMPTY" => Some(String::new()),
        "TWO_LINES" => Some("a\nb".to_owned()),
        _ => None,
    }
}

/// The lines of a YAML text as libyaml counts them: ended by `\r\n`, `\n`, a lone `\r`, or
/// the Unicode next-line, line and paragraph separators; a last line without an ending
/// counts too.
fn lines(text: &str) -> usize {
    let ending = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let breaks = text.chars().filter(|&c| ending(c)).count() - text.matches("\r\n").count();
    breaks + usize::from(!text.is_empty() && !text.ends_with(ending))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse_str("fuzz.yaml", text, &env) {
        Ok(loaded) => {
            assert_eq!(loaded.config.validate(), Ok(()));
            let _ = loaded.config.effective_routes();
            let _ = format!("{:?}", loaded.config);
        }
        Err(e) => {
            let shown = e.to_string();
            let Some(line) = e.line else {
                // An alias expanded too many times is a property of the whole document.
                assert!(
                    e.message.contains("repetition limit exceeded"),
                    "an error without a line: {shown}"
                );
                return;
            };
            // A line of the file, or the one just past its end (an unexpected end).
            assert!(
                (1..=lines(text) + 1).contains(&line),
                "line {line} of a {}-line file: {shown}",
                lines(text)
            );
        }
    }
});
