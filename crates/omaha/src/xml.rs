//! A small element tree read with `quick-xml`, bounded for hostile input, and the writing
//! side's escaping. Omaha documents are a few elements deep and a few kilobytes long; the
//! bounds are far above that. No DTD is read and no entity but XML's five (and character
//! references) is expanded, so entity tricks have nothing to work with.

use quick_xml::events::{BytesStart, Event};

use crate::Error;

/// The largest document read, bytes.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// The deepest nesting read.
const MAX_DEPTH: usize = 16;
/// The most elements read.
const MAX_ELEMENTS: usize = 4096;

/// An element: its name, its attributes in document order, its child elements. Text is
/// dropped (Omaha carries everything in attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn element(start: &BytesStart<'_>) -> Result<Element, Error> {
    let name = start.name().0.to_string();
    let mut attrs = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| Error::Xml(e.to_string()))?;
        let key = a.key.0.to_string();
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| Error::Xml(e.to_string()))?
            .into_owned();
        if attrs.iter().any(|(k, _)| *k == key) {
            return Err(Error::Xml(format!("attribute {key:?} twice on <{name}>")));
        }
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// Parses a whole document into its root element.
pub(crate) fn parse(text: &str) -> Result<Element, Error> {
    if text.trim().is_empty() {
        return Err(Error::Empty);
    }
    if text.len() > MAX_DOCUMENT {
        return Err(Error::TooLarge(text.len()));
    }
    let mut reader = quick_xml::Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::Xml(format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let name = s.name().0;
                return Err(Error::Xml(format!("<{name}> after the root element")));
            }
            Event::Start(s) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(Error::Xml("nested too deep or too many elements".into()));
                }
                stack.push(element(&s)?);
            }
            Event::Empty(s) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(Error::Xml("too many elements".into()));
                }
                let e = element(&s)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(e),
                    None => root = Some(e),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(Error::Xml("an end tag without a start".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::DocType(_) => return Err(Error::Xml("a DTD is not accepted".into())),
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(Error::Xml("the document ends inside an element".into()));
    }
    root.ok_or_else(|| Error::Xml("no root element".into()))
}

/// `s` escaped for an attribute value in double quotes.
pub(crate) fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_document_becomes_a_tree() {
        let root = parse(
            "<?xml version=\"1.0\"?>\n<a x=\"1 &amp; 2\"><b/><c y='&#65;'>text</c><b></b></a>\n",
        )
        .unwrap();
        assert_eq!(root.name, "a");
        assert_eq!(root.attr("x"), Some("1 & 2"));
        assert_eq!(root.all("b").count(), 2);
        assert_eq!(root.child("c").unwrap().attr("y"), Some("A"));
    }

    #[test]
    fn hostile_and_broken_documents_are_refused() {
        for (doc, want) in [
            ("", "empty"),
            ("   \n", "empty"),
            ("<a><b></a>", "xml"),
            ("<a>", "xml"),
            ("</a>", "xml"),
            ("<a></a><b/>", "xml"),
            ("<a x=\"1\" x=\"2\"/>", "xml"),
            ("<!DOCTYPE a [<!ENTITY e \"&e;&e;\">]><a x=\"&e;\"/>", "xml"),
            ("<a x=\"&unknown;\"/>", "xml"),
            ("just text", "xml"),
        ] {
            let err = parse(doc).unwrap_err();
            let kind = match err {
                Error::Empty => "empty",
                Error::Xml(_) => "xml",
                _ => "other",
            };
            assert_eq!(kind, want, "{doc:?}: {err}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(&deep), Err(Error::Xml(_))));
        let wide = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS + 1));
        assert!(matches!(parse(&wide), Err(Error::Xml(_))));
        let huge = format!("<a x=\"{}\"/>", "x".repeat(MAX_DOCUMENT));
        assert!(matches!(parse(&huge), Err(Error::TooLarge(_))));
    }
}
