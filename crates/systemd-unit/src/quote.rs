//! systemd's word splitting (`ExecStart=`, `Environment=` …): quotes and C escapes.

/// A value that does not split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// An opening quote with no closing one.
    #[error("unterminated quote in {0:?}")]
    Unterminated(String),
    /// A backslash at the end or before something that is not an escape.
    #[error("invalid escape sequence in {0:?}")]
    InvalidEscape(String),
}

fn unescape_one(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    whole: &str,
) -> Result<char, QuoteError> {
    let bad = || QuoteError::InvalidEscape(whole.to_string());
    let c = chars.next().ok_or_else(bad)?;
    let mut hex = |n: usize, radix: u32| -> Result<char, QuoteError> {
        let digits: String = (0..n).filter_map(|_| chars.next()).collect();
        if digits.chars().count() != n {
            return Err(bad());
        }
        u32::from_str_radix(&digits, radix)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(bad)
    };
    Ok(match c {
        'a' => '\u{7}',
        'b' => '\u{8}',
        'f' => '\u{c}',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\u{b}',
        's' => ' ',
        '\\' | '"' | '\'' => c,
        'x' => hex(2, 16)?,
        'u' => hex(4, 16)?,
        'U' => hex(8, 16)?,
        '0'..='7' => {
            let rest: String = (0..2).filter_map(|_| chars.next()).collect();
            let digits = format!("{c}{rest}");
            if digits.len() != 3 {
                return Err(bad());
            }
            u32::from_str_radix(&digits, 8)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(bad)?
        }
        _ => return Err(bad()),
    })
}

/// Splits a value into words as systemd does for command lines: whitespace separates words,
/// `"…"` and `'…'` group, and C escapes (`\n`, `\x2d`, `\s`, …) are decoded everywhere.
pub fn split_words(value: &str) -> Result<Vec<String>, QuoteError> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (_, '\\') => word.push(unescape_one(&mut chars, value)?),
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, c) => word.push(c),
            }
        }
        if quote.is_some() {
            return Err(QuoteError::Unterminated(value.to_string()));
        }
        words.push(word);
    }
}

/// Quotes one word so that [`split_words`] gives it back unchanged.
pub fn quote_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\'' | '\\'));
    if plain {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c) & 0xff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_systemd() {
        assert_eq!(
            split_words(r#"/bin/bash -c "while true; do echo \"Hello, world\"; sleep 1; done""#)
                .unwrap(),
            vec![
                "/bin/bash",
                "-c",
                "while true; do echo \"Hello, world\"; sleep 1; done"
            ]
        );
        assert_eq!(
            split_words("a 'b c' d\\x2de\\se").unwrap(),
            vec!["a", "b c", "d-e e"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("x\"y z\"w").unwrap(), vec!["xy zw"]);
        assert_eq!(split_words("\\101\\u00e9").unwrap(), vec!["Aé"]);
        assert!(matches!(
            split_words("a \"b"),
            Err(QuoteError::Unterminated(_))
        ));
        assert!(matches!(
            split_words("a\\"),
            Err(QuoteError::InvalidEscape(_))
        ));
        assert!(matches!(
            split_words("a\\q"),
            Err(QuoteError::InvalidEscape(_))
        ));
    }

    #[test]
    fn quote_round_trips() {
        for w in [
            "plain",
            "",
            "two words",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "it's",
        ] {
            assert_eq!(split_words(&quote_word(w)).unwrap(), vec![w.to_string()]);
        }
    }
}
