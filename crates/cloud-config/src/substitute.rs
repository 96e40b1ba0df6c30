//! `$public_ipv4`-style variable substitution on the raw user-data text.

/// The addresses substituted for `$public_ipv4`, `$private_ipv4`, `$public_ipv6` and
/// `$private_ipv6`, and merged into `/etc/environment` as `COREOS_*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// `$public_ipv4`
    pub public_ipv4: String,
    /// `$private_ipv4`
    pub private_ipv4: String,
    /// `$public_ipv6`
    pub public_ipv6: String,
    /// `$private_ipv6`
    pub private_ipv6: String,
}

impl Addresses {
    /// (variable, value) pairs in the order coreos-cloudinit substitutes them.
    pub fn variables(&self) -> [(&'static str, &str); 4] {
        [
            ("$public_ipv4", &self.public_ipv4),
            ("$private_ipv4", &self.private_ipv4),
            ("$public_ipv6", &self.public_ipv6),
            ("$private_ipv6", &self.private_ipv6),
        ]
    }

    /// The `COREOS_*` variables with a value, sorted by name.
    pub fn environment(&self) -> Vec<(&'static str, &str)> {
        let mut out: Vec<(&'static str, &str)> = [
            ("COREOS_PUBLIC_IPV4", self.public_ipv4.as_str()),
            ("COREOS_PRIVATE_IPV4", self.private_ipv4.as_str()),
            ("COREOS_PUBLIC_IPV6", self.public_ipv6.as_str()),
            ("COREOS_PRIVATE_IPV6", self.private_ipv6.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        out.sort();
        out
    }

    /// Fills every empty address from `lookup` (`COREOS_PUBLIC_IPV4` …).
    pub fn fill_from(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for (slot, name) in [
            (&mut self.public_ipv4, "COREOS_PUBLIC_IPV4"),
            (&mut self.private_ipv4, "COREOS_PRIVATE_IPV4"),
            (&mut self.public_ipv6, "COREOS_PUBLIC_IPV6"),
            (&mut self.private_ipv6, "COREOS_PRIVATE_IPV6"),
        ] {
            if slot.is_empty() {
                if let Some(v) = lookup(name) {
                    *slot = v;
                }
            }
        }
    }
}

/// Replaces each variable occurrence at the start of the text or after a character other
/// than `\`, then turns `\$var` into `$var` — coreos-cloudinit's rules, quirks included: in
/// `$a$a` only the first is replaced, because the match consumed the character before the
/// second.
pub fn substitute(text: &str, addrs: &Addresses) -> String {
    let mut out = text.to_string();
    for (var, value) in addrs.variables() {
        out = replace_unescaped(&out, var, value);
        out = out.replace(&format!("\\{var}"), var);
    }
    out
}

/// The regex `(^|[^\\])\$var` replaced by `${1}value`, without regex.
fn replace_unescaped(text: &str, var: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // The end of the previous match: a match needs its own preceding character after it.
    let mut consumed_to = 0;
    while let Some(pos) = text[i..].find(var).map(|p| p + i) {
        let ok = if pos == 0 {
            consumed_to == 0
        } else {
            let prev = text[..pos].chars().next_back().unwrap_or('\\');
            let prev_start = pos - prev.len_utf8();
            prev != '\\' && prev_start >= consumed_to
        };
        if ok {
            out.push_str(&text[i..pos]);
            out.push_str(value);
            i = pos + var.len();
            consumed_to = i;
        } else {
            let next = pos + var.chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..next]);
            i = next;
        }
    }
    out.push_str(&text[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Addresses {
        Addresses {
            public_ipv4: "203.0.113.29".into(),
            private_ipv4: "192.0.2.13".into(),
            ..Default::default()
        }
    }

    #[test]
    fn reference_table() {
        let a = addrs();
        let cases = [
            ("$private_ipv4:$private_ipv4", "192.0.2.13:192.0.2.13"),
            ("$public_ipv4$public_ipv4", "203.0.113.29$public_ipv4"),
            ("\\$public_ipv4", "$public_ipv4"),
            ("\\\\$public_ipv4", "\\$public_ipv4"),
            ("${public_ipv4}", "${public_ipv4}"),
            ("$PUBLIC_IPV4", "$PUBLIC_IPV4"),
            ("$public_ipv4s", "203.0.113.29s"),
            ("$public_ipv6|$private_ipv6", "|"),
            ("$unknown \\$test", "$unknown \\$test"),
            ("http://$private_ipv4:2380", "http://192.0.2.13:2380"),
            ("é$public_ipv4", "é203.0.113.29"),
        ];
        for (input, want) in cases {
            assert_eq!(substitute(input, &a), want, "{input}");
        }
    }

    #[test]
    fn environment_is_sorted_and_skips_empty() {
        assert_eq!(
            addrs().environment(),
            vec![
                ("COREOS_PRIVATE_IPV4", "192.0.2.13"),
                ("COREOS_PUBLIC_IPV4", "203.0.113.29")
            ]
        );
    }
}
