//! Omaha v3 as CoreOS's update_engine spoke it (updates.md §4), both sides:
//!
//! - [`Request`]: written exactly as update_engine wrote it (`to_xml`: attribute order,
//!   indentation, the space before `>` of `<app>`), so servers that know CoreOS's client
//!   (CoreUpdate, Nebraska, go-omaha) read it as theirs; read by a server from any client
//!   (`parse`: any attribute order, unknown parts ignored).
//! - [`CheckResponse`]: the client's reading of an update check's answer, exactly as strict
//!   as update_engine's — what is required, what is ignored, and which error code each gap
//!   is ([`Error::code`]: 30 empty, 31 not XML, 34 invalid).
//! - [`Response`]: a server's answer in CoreUpdate's shape.
//! - [`codes`]: event types and results, update_engine's error codes and flag bits.
//!
//! The XML reader (`quick-xml`) is bounded: 256 KiB, 16 levels, 4096 elements; no DTD and
//! no entities beyond XML's own. Property tests feed it arbitrary and mutated documents.
//!
//! Invariant: pure data and text, no I/O.

pub mod codes;
mod request;
mod response;
mod xml;

pub use request::{App, Event, InstallSource, Os, Request};
pub use response::{AppAnswer, CheckResponse, Offer, Package, Response, UpdateCheck};
pub use xml::MAX_DOCUMENT;

/// A document that is not an Omaha message Ferrite can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An empty body.
    #[error("empty response")]
    Empty,
    /// Larger than [`MAX_DOCUMENT`].
    #[error("a document of {0} bytes (at most {MAX_DOCUMENT} are read)")]
    TooLarge(usize),
    /// Not well-formed XML, or beyond the reader's bounds.
    #[error("not well-formed XML: {0}")]
    Xml(String),
    /// A request for another protocol version.
    #[error("protocol {0:?} (only \"3.0\" is spoken)")]
    Protocol(String),
    /// Well-formed, but lacking what is required.
    #[error("invalid Omaha message: {0}")]
    Invalid(String),
}

impl Error {
    /// update_engine's error code for a response that fails this way.
    pub fn code(&self) -> codes::ErrorCode {
        match self {
            Error::Empty => codes::ErrorCode::OmahaRequestEmptyResponse,
            Error::TooLarge(_) | Error::Xml(_) => codes::ErrorCode::OmahaRequestXmlParseError,
            Error::Protocol(_) | Error::Invalid(_) => codes::ErrorCode::OmahaResponseInvalid,
        }
    }
}
