//! Go's `path.Match`, which fleet uses for `Conflicts` and `Replaces`: `*` and `?` do not
//! cross `/`, `[...]` classes with ranges and `^` negation, `\` escapes; a malformed pattern
//! matches nothing.

/// Whether `name` matches the Go `path.Match` pattern `pattern` (false when malformed).
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern.is_ascii() && name.is_ascii() {
        // Unit names are ASCII: match bytes without allocating.
        let p = pattern.as_bytes();
        let n = name.as_bytes();
        return valid(p) && match_from(p, n);
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    valid(&p) && match_from(&p, &n)
}

/// A pattern or name character: bytes for ASCII text, `char`s otherwise.
trait Sym: Copy + PartialEq + PartialOrd {
    fn of(c: char) -> Self;
}

impl Sym for u8 {
    fn of(c: char) -> Self {
        c as u8
    }
}

impl Sym for char {
    fn of(c: char) -> Self {
        c
    }
}

/// Whether the pattern is well formed (Go returns ErrBadPattern otherwise).
fn is<T: Sym>(t: Option<&T>, c: char) -> bool {
    t.is_some_and(|t| *t == T::of(c))
}

fn valid<T: Sym>(p: &[T]) -> bool {
    let mut i = 0;
    while i < p.len() {
        if is(p.get(i), '\\') {
            if i + 1 >= p.len() {
                return false;
            }
            i += 2;
        } else if is(p.get(i), '[') {
            match class_end(p, i) {
                Some(end) => i = end,
                None => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// The index just past a well-formed class starting at `p[start] == '['`.
fn class_end<T: Sym>(p: &[T], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if is(p.get(i), '^') {
        i += 1;
    }
    let mut first = true;
    loop {
        p.get(i)?;
        if is(p.get(i), ']') && !first {
            return Some(i + 1);
        }
        first = false;
        // A range endpoint: a plain character or an escaped one.
        i += range_char(p, i)?;
        if is(p.get(i), '-') && !is(p.get(i + 1), ']') {
            i += 1;
            i += range_char(p, i)?;
        }
    }
}

/// Length of one class character at `i` (`c` or `\c`); `None` if malformed.
fn range_char<T: Sym>(p: &[T], i: usize) -> Option<usize> {
    p.get(i)?;
    if is(p.get(i), '\\') {
        p.get(i + 1).map(|_| 2)
    } else if is(p.get(i), '-') || is(p.get(i), ']') {
        None
    } else {
        Some(1)
    }
}

fn char_at<T: Sym>(p: &[T], i: usize) -> (T, usize) {
    if is(p.get(i), '\\') && i + 1 < p.len() {
        (p[i + 1], 2)
    } else {
        (p[i], 1)
    }
}

/// Matches one class at `p[start]` against `c`; returns (matched, index past the class).
fn match_class<T: Sym>(p: &[T], start: usize, c: T) -> (bool, usize) {
    let mut i = start + 1;
    let negated = is(p.get(i), '^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if is(p.get(i), ']') && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, l1) = char_at(p, i);
        i += l1;
        let mut hi = lo;
        if is(p.get(i), '-') && !is(p.get(i + 1), ']') {
            let (h, l2) = char_at(p, i + 1);
            hi = h;
            i += 1 + l2;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    (matched != negated, i)
}

fn match_from<T: Sym>(p: &[T], n: &[T]) -> bool {
    let (mut pi, mut ni) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern index after it, name index).
    let mut star: Option<(usize, usize)> = None;
    let slash = T::of('/');
    loop {
        if pi < p.len() {
            let here = p.get(pi);
            let can_take = ni < n.len() && n[ni] != slash;
            if is(here, '*') {
                star = Some((pi + 1, ni));
                pi += 1;
                continue;
            } else if is(here, '?') {
                if can_take {
                    pi += 1;
                    ni += 1;
                    continue;
                }
            } else if is(here, '[') {
                if can_take {
                    let (ok, next) = match_class(p, pi, n[ni]);
                    if ok {
                        pi = next;
                        ni += 1;
                        continue;
                    }
                }
            } else {
                let (c, len) = char_at(p, pi);
                if ni < n.len() && n[ni] == c {
                    pi += len;
                    ni += 1;
                    continue;
                }
            }
        } else if ni == n.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more (non-/) character.
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != slash => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn go_path_match_table() {
        // Cases from Go's path.Match tests.
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[x-]", "-", false),
            ("[x-]", "z", false),
            ("[-x]", "x", false),
            ("[-x]", "-", false),
            ("[-x]", "a", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("*x", "xxx", true),
            ("conflict.*.service", "conflict.1.service", true),
            ("hello.service", "hello.service", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), want, "Match({p:?}, {n:?})");
        }
    }
}
