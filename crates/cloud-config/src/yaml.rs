//! YAML as coreos-cloudinit's go-yaml (v1, a libyaml port) reads it, with the position of
//! every node.
//!
//! The document is read with a libyaml port, so syntax errors carry libyaml's exact problem
//! texts. Plain scalars are resolved with YAML 1.1 rules as go-yaml v1 did (`yes`/`on` are
//! booleans, `0644` is an octal int, `~` is null), but every scalar also keeps its literal
//! text: string-typed cloud-config fields take that text, which is how `reboot-strategy: off`
//! stays `"off"` and `permissions: 0644` stays `"0644"`.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use libyaml_safer::{EventData, Parser, ScalarStyle};

/// How a scalar resolves under YAML 1.1 (go-yaml v1's `resolve`).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// `~`, `null`, or nothing.
    Null,
    /// `yes`, `on`, `true`, `n`, …
    Bool(bool),
    /// Decimal, `0`-octal, `0x` hex or `0b` binary, `_` separators allowed.
    Int(i128),
    /// Anything `ParseFloat` accepts, plus `.inf`/`.nan`.
    Float(f64),
    /// Everything else, and every quoted or block scalar.
    Str,
    /// A `!!binary` scalar, already base64-decoded.
    Binary(Vec<u8>),
}

/// A scalar value: its literal text and what it resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The scalar's text as written (after YAML unquoting and folding).
    pub text: String,
    /// The YAML 1.1 resolution.
    pub resolved: Resolved,
}

impl Scalar {
    /// The bytes a string field gets: the decoded data of a `!!binary` scalar, else the text.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.resolved {
            Resolved::Binary(b) => b.clone(),
            Resolved::Null => Vec::new(),
            _ => self.text.clone().into_bytes(),
        }
    }

    /// The text a string field gets (lossy for binary data; empty for null).
    pub fn string(&self) -> String {
        match &self.resolved {
            Resolved::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            Resolved::Null => String::new(),
            _ => self.text.clone(),
        }
    }
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node is.
    pub kind: NodeKind,
    /// 1-based line where the node starts.
    pub line: usize,
}

/// The three kinds of YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar.
    Scalar(Scalar),
    /// A mapping, entries in document order (duplicates kept).
    Mapping(Vec<(Node, Node)>),
    /// A sequence.
    Sequence(Vec<Node>),
}

impl Node {
    /// True for a null scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s) if s.resolved == Resolved::Null)
    }

    /// The scalar, if this is one.
    pub fn scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The mapping entries, if this is a mapping.
    pub fn mapping(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Mapping(m) => Some(m),
            _ => None,
        }
    }

    /// The items, if this is a sequence.
    pub fn sequence(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Sequence(s) => Some(s),
            _ => None,
        }
    }

    /// The key text of a mapping key (scalars only).
    pub fn key_text(&self) -> Option<&str> {
        self.scalar().map(|s| s.text.as_str())
    }
}

/// A YAML document that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    /// libyaml's (or go-yaml's) message, e.g. `found character that cannot start any token`.
    pub message: String,
    /// The 1-based line of the problem.
    pub line: usize,
    /// The line go-yaml v1 reported: libyaml's 0-based mark, 0 when it had none.
    pub go_line: usize,
}

/// Limits that keep hostile input from exhausting memory or stack: nesting, nodes, and the
/// scalar bytes that aliases copy (an "alias bomb" of long strings stays within the node
/// limit while expanding to gigabytes; libyaml-based tools bound the expansion too).
pub const MAX_DEPTH: usize = 512;
/// See [`MAX_DEPTH`].
pub const MAX_NODES: usize = 1_000_000;
/// See [`MAX_DEPTH`].
pub const MAX_ALIAS_BYTES: usize = 16 * 1024 * 1024;

enum Frame {
    Mapping {
        line: usize,
        anchor: Option<String>,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
    Sequence {
        line: usize,
        anchor: Option<String>,
        items: Vec<Node>,
    },
}

fn line_of_offset(input: &[u8], offset: usize) -> usize {
    input[..offset.min(input.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn from_libyaml(input: &[u8], e: &libyaml_safer::Error) -> YamlError {
    let problem = e.problem_mark();
    let context = e.context_mark();
    // go-yaml v1 used the 0-based problem mark, or the context mark when that was 0.
    let go_line = match (problem, context) {
        (Some(p), _) if p.line != 0 => p.line,
        (_, Some(c)) if c.line != 0 => c.line,
        _ => 0,
    } as usize;
    // Ferrite reports the 1-based line of the problem; a problem found at the end of the
    // input (an unclosed quote or bracket) is reported where the unclosed thing started.
    let at_end = problem.is_some_and(|p| p.index as usize >= input.len());
    let line = match (problem, context) {
        (Some(_), Some(c)) if at_end => c.line as usize + 1,
        (Some(p), _) => p.line as usize + 1,
        _ => 1,
    };
    let line = line.min(line_of_offset(input, input.len()) + 1).max(1);
    YamlError {
        message: e.problem().to_string(),
        line,
        go_line,
    }
}

/// Parses the first document of `input`. An empty document gives `None`.
pub fn parse(input: &[u8]) -> Result<Option<Node>, YamlError> {
    match std::panic::catch_unwind(|| parse_inner(input)) {
        Ok(r) => r,
        Err(_) => Err(YamlError {
            message: "internal error in the YAML parser".to_string(),
            line: 1,
            go_line: 0,
        }),
    }
}

fn resolve_plain(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Resolved::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Resolved::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let Some(first) = text.chars().next() else {
        return Resolved::Null;
    };
    if first == '.' {
        return parse_go_float(text).map_or(Resolved::Str, Resolved::Float);
    }
    if !(first.is_ascii_digit() || first == '+' || first == '-') {
        return Resolved::Str;
    }
    let plain = text.replace('_', "");
    if let Some(i) = parse_go_int(&plain) {
        return Resolved::Int(i);
    }
    if let Some(f) = parse_go_float(&plain) {
        return Resolved::Float(f);
    }
    Resolved::Str
}

/// Go's `strconv.ParseInt(s, 0, 64)` (and `ParseUint`): sign, then `0x`, `0o`, `0b`, a
/// leading `0` for octal, or decimal.
fn parse_go_int(s: &str) -> Option<i128> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -v } else { v };
    // int64 or uint64 range.
    (v >= i128::from(i64::MIN) && v <= i128::from(u64::MAX)).then_some(v)
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal forms YAML users write.
fn parse_go_float(s: &str) -> Option<f64> {
    let body = s.trim_start_matches(['+', '-']);
    let ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && body.chars().any(|c| c.is_ascii_digit());
    if ok {
        s.parse::<f64>().ok()
    } else {
        let l = body.to_ascii_lowercase();
        matches!(l.as_str(), "inf" | "infinity" | "nan")
            .then(|| s.parse::<f64>().ok())
            .flatten()
    }
}

fn resolve(
    text: &str,
    tag: Option<&str>,
    style: ScalarStyle,
    line: usize,
) -> Result<Resolved, YamlError> {
    let tag = tag.map(|t| t.strip_prefix("tag:yaml.org,2002:").map_or(t, |s| s));
    match tag {
        Some("binary") => {
            let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(cleaned)
                .map(Resolved::Binary)
                .map_err(|_| YamlError {
                    message: "!!binary value contains invalid base64 data".to_string(),
                    line,
                    go_line: 0,
                })
        }
        Some("str") => Ok(Resolved::Str),
        Some("null" | "bool" | "int" | "float") => Ok(resolve_plain(text)),
        Some(_) => Ok(Resolved::Str),
        None if style == ScalarStyle::Plain => Ok(resolve_plain(text)),
        None => Ok(Resolved::Str),
    }
}

/// The document being built from parser events, with its limits' counters.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Each anchored node with its node count and scalar bytes, measured once.
    anchors: HashMap<String, (Node, usize, usize)>,
    alias_bytes: usize,
    nodes: usize,
    root: Option<Node>,
}

impl Builder {
    /// A copy of the anchored node, refused before copying if it would pass a limit.
    fn alias(&mut self, anchor: &str, line: usize) -> Result<Node, YamlError> {
        let Some((node, count, bytes)) = self.anchors.get(anchor) else {
            return Err(YamlError {
                message: format!("unknown anchor '{anchor}' referenced"),
                line,
                go_line: line - 1,
            });
        };
        if self.nodes + count > MAX_NODES {
            return Err(too_many_nodes(line));
        }
        self.alias_bytes += bytes;
        if self.alias_bytes > MAX_ALIAS_BYTES {
            return Err(YamlError {
                message: format!(
                    "aliases expand the document by more than {MAX_ALIAS_BYTES} bytes \
                     (the limit)"
                ),
                line,
                go_line: line - 1,
            });
        }
        self.nodes += count;
        Ok(node.clone())
    }

    /// A sequence or mapping begins.
    fn open(&mut self, frame: Frame, line: usize) -> Result<(), YamlError> {
        self.stack.push(frame);
        if self.stack.len() > MAX_DEPTH {
            return Err(too_deep(line));
        }
        Ok(())
    }

    /// The innermost sequence or mapping ends: its node and anchor.
    fn close(&mut self) -> Option<(Node, Option<String>)> {
        Some(match self.stack.pop()? {
            Frame::Sequence {
                line,
                anchor,
                items,
            } => (
                Node {
                    kind: NodeKind::Sequence(items),
                    line,
                },
                anchor,
            ),
            Frame::Mapping {
                line,
                anchor,
                entries,
                ..
            } => (
                Node {
                    kind: NodeKind::Mapping(entries),
                    line,
                },
                anchor,
            ),
        })
    }

    /// A finished node goes into its parent (an alias counts as one more node besides the
    /// nodes it copies).
    fn add(&mut self, node: Node, anchor: Option<String>, line: usize) -> Result<(), YamlError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(too_many_nodes(line));
        }
        if let Some(a) = anchor {
            let (count, bytes) = measure(&node);
            self.anchors.insert(a, (node.clone(), count, bytes));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => {
                    if !matches!(node.kind, NodeKind::Scalar(_)) {
                        return Err(YamlError {
                            message: format!("invalid map key: {}", go_repr(&node)),
                            line: node.line,
                            go_line: 0,
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

fn parse_inner(input: &[u8]) -> Result<Option<Node>, YamlError> {
    let mut parser = Parser::new();
    let mut reader = input;
    parser.set_input_string(&mut reader);
    let mut doc = Builder::default();
    let mut seen_document = false;
    loop {
        let event = parser.parse().map_err(|e| from_libyaml(input, &e))?;
        let line = event.start_mark.line as usize + 1;
        match event.data {
            EventData::StreamStart { .. } => {}
            EventData::StreamEnd | EventData::DocumentEnd { .. } => break,
            EventData::DocumentStart { .. } => {
                if seen_document {
                    break;
                }
                seen_document = true;
            }
            EventData::Alias { anchor } => {
                let node = doc.alias(&anchor, line)?;
                doc.add(node, None, line)?;
            }
            EventData::Scalar {
                anchor,
                tag,
                value,
                style,
                ..
            } => {
                let resolved = resolve(&value, tag.as_deref(), style, line)?;
                let node = Node {
                    kind: NodeKind::Scalar(Scalar {
                        text: value,
                        resolved,
                    }),
                    line,
                };
                doc.add(node, anchor, line)?;
            }
            EventData::SequenceStart { anchor, .. } => doc.open(
                Frame::Sequence {
                    line,
                    anchor,
                    items: Vec::new(),
                },
                line,
            )?,
            EventData::MappingStart { anchor, .. } => doc.open(
                Frame::Mapping {
                    line,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                },
                line,
            )?,
            EventData::SequenceEnd | EventData::MappingEnd => {
                if let Some((node, anchor)) = doc.close() {
                    doc.add(node, anchor, line)?;
                }
            }
        }
    }
    Ok(doc.root)
}

fn too_many_nodes(line: usize) -> YamlError {
    YamlError {
        message: format!("document has more than {MAX_NODES} nodes (the limit; alias expansion?)"),
        line,
        go_line: line - 1,
    }
}

fn too_deep(line: usize) -> YamlError {
    YamlError {
        message: format!("document is nested more than {MAX_DEPTH} levels deep"),
        line,
        go_line: line - 1,
    }
}

/// A node's size: how many nodes, and how many bytes of scalar text (what copying it
/// copies).
fn measure(node: &Node) -> (usize, usize) {
    let add = |(n, b): (usize, usize), (m, c): (usize, usize)| (n + m, b + c);
    match &node.kind {
        NodeKind::Scalar(s) => {
            let binary = match &s.resolved {
                Resolved::Binary(b) => b.len(),
                _ => 0,
            };
            (1, s.text.len() + binary)
        }
        NodeKind::Sequence(items) => items.iter().map(measure).fold((1, 0), add),
        NodeKind::Mapping(entries) => entries
            .iter()
            .map(|(k, v)| add(measure(k), measure(v)))
            .fold((1, 0), add),
    }
}

/// Go's `%#v` of the generic value go-yaml v1 builds, used in its `invalid map key` message.
fn go_repr(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar(s) => match &s.resolved {
            Resolved::Null => "interface {}(nil)".to_string(),
            Resolved::Bool(b) => b.to_string(),
            Resolved::Int(i) => i.to_string(),
            Resolved::Float(f) => f.to_string(),
            Resolved::Str | Resolved::Binary(_) => format!("{:?}", s.text),
        },
        NodeKind::Sequence(items) => {
            let inner: Vec<String> = items.iter().map(go_elem).collect();
            format!("[]interface {{}}{{{}}}", inner.join(", "))
        }
        NodeKind::Mapping(entries) => {
            let mut out = String::from("map[interface {}]interface {}{");
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{}:{}", go_elem(k), go_elem(v));
            }
            out.push('}');
            out
        }
    }
}

/// An element inside a Go `interface{}` container: scalars show their dynamic type.
fn go_elem(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar(s) => match &s.resolved {
            Resolved::Null => "interface {}(nil)".to_string(),
            Resolved::Bool(b) => format!("{b}"),
            Resolved::Int(i) => format!("{i}"),
            Resolved::Float(f) => format!("{f}"),
            Resolved::Str | Resolved::Binary(_) => format!("{:?}", s.text),
        },
        _ => go_repr(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(s: &str) -> Node {
        parse(s.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn scalars_keep_text_and_resolve() {
        let n = root("#cloud-config\na: 0644\nb: off\nc: '0644'\nd: ~\ne: 0x1F\nf: 1_000\ng: 0999\nh: yes\ni: .5\nj: hello\nk:\n");
        let m = n.mapping().unwrap();
        let get = |k: &str| {
            m.iter()
                .find(|(kk, _)| kk.key_text() == Some(k))
                .unwrap()
                .1
                .clone()
        };
        let s = |k: &str| get(k).scalar().unwrap().clone();
        assert_eq!(s("a").text, "0644");
        assert_eq!(s("a").resolved, Resolved::Int(0o644));
        assert_eq!(s("b").resolved, Resolved::Bool(false));
        assert_eq!(s("b").text, "off");
        assert_eq!(s("c").resolved, Resolved::Str);
        assert_eq!(s("d").resolved, Resolved::Null);
        assert_eq!(s("e").resolved, Resolved::Int(31));
        assert_eq!(s("f").resolved, Resolved::Int(1000));
        assert_eq!(s("g").resolved, Resolved::Float(999.0));
        assert_eq!(s("h").resolved, Resolved::Bool(true));
        assert_eq!(s("i").resolved, Resolved::Float(0.5));
        assert_eq!(s("j").resolved, Resolved::Str);
        assert!(get("k").is_null());
        assert_eq!(get("a").line, 2);
        assert_eq!(get("k").line, 12);
    }

    #[test]
    fn binary_and_anchors() {
        let n = root("a: !!binary aGVsbG8K\nb: &x [1, 2]\nc: *x\n");
        let m = n.mapping().unwrap();
        assert_eq!(m[0].1.scalar().unwrap().bytes(), b"hello\n");
        assert_eq!(m[2].1.sequence().unwrap().len(), 2);
        let e = parse(b"a: !!binary '!!!'\n").unwrap_err();
        assert!(e.message.contains("invalid base64"));
    }

    #[test]
    fn errors_carry_libyaml_text_and_lines() {
        let e = parse(b"#cloud-config\nhostname:\n\tfoo: bar\n").unwrap_err();
        assert_eq!(e.message, "found character that cannot start any token");
        assert_eq!((e.line, e.go_line), (3, 2));
        let e = parse(b"#cloud-config\nhostname: \"abc\n").unwrap_err();
        assert_eq!(e.message, "found unexpected end of stream");
        assert_eq!((e.line, e.go_line), (2, 2));
        let e =
            parse(b"#cloud-config\ncoreos:\n  flannel:\n    etcd_endpoints: {{X}}\n").unwrap_err();
        assert_eq!(
            e.message,
            "invalid map key: map[interface {}]interface {}{\"X\":interface {}(nil)}"
        );
        assert_eq!(e.line, 4);
    }

    #[test]
    fn empty_and_comment_only_documents() {
        assert_eq!(parse(b"").unwrap(), None);
        assert_eq!(parse(b"#cloud-config\n").unwrap(), None);
        assert!(root("#cloud-config\n---\nhostname: a\n")
            .mapping()
            .is_some());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes()).is_err());
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
        assert!(parse(bomb.as_bytes()).is_err());
    }
}
