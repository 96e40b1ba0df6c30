//! The numbers Omaha events carry: event types and results (go-omaha's names) and
//! update_engine's error codes with their flag bits (updates.md §3.9, §4.2).

/// An event's type (`eventtype`). The ones update_engine sends have names; any other
/// number a client sends is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// 3: the update completed (with result 2 inside every check; 1 after postinstall;
    /// 0 on an error).
    UpdateComplete,
    /// 13: the payload download started.
    DownloadStarted,
    /// 14: the payload was downloaded and verified.
    DownloadFinished,
    /// Another type.
    Other(u32),
}

impl EventType {
    /// Its number.
    pub fn code(self) -> u32 {
        match self {
            EventType::UpdateComplete => 3,
            EventType::DownloadStarted => 13,
            EventType::DownloadFinished => 14,
            EventType::Other(n) => n,
        }
    }

    /// The type numbered `n`.
    pub fn from_code(n: u32) -> Self {
        match n {
            3 => EventType::UpdateComplete,
            13 => EventType::DownloadStarted,
            14 => EventType::DownloadFinished,
            n => EventType::Other(n),
        }
    }
}

/// An event's result (`eventresult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventResult {
    /// 0: an error (with an error code).
    Error,
    /// 1: success.
    Success,
    /// 2: success, reboot (sent inside every update check).
    SuccessReboot,
    /// 9: deferred (with an error code).
    Deferred,
    /// Another result.
    Other(u32),
}

impl EventResult {
    /// Its number.
    pub fn code(self) -> u32 {
        match self {
            EventResult::Error => 0,
            EventResult::Success => 1,
            EventResult::SuccessReboot => 2,
            EventResult::Deferred => 9,
            EventResult::Other(n) => n,
        }
    }

    /// The result numbered `n`.
    pub fn from_code(n: u32) -> Self {
        match n {
            0 => EventResult::Error,
            1 => EventResult::Success,
            2 => EventResult::SuccessReboot,
            9 => EventResult::Deferred,
            n => EventResult::Other(n),
        }
    }
}

/// update_engine's error codes (`errorcode=` on 3/0 events), the ones Ferrite reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Generic error.
    Error = 1,
    /// The update check failed.
    OmahaRequestError = 2,
    /// The response could not be acted on.
    OmahaResponseHandlerError = 3,
    /// The post-install step failed.
    PostinstallRunnerError = 5,
    /// The passive partition could not be opened.
    InstallDeviceOpenError = 7,
    /// The download failed.
    DownloadTransferError = 9,
    /// The payload's SHA-256 is not the one offered.
    PayloadHashMismatch = 10,
    /// The payload's size is not the one offered.
    PayloadSizeMismatch = 11,
    /// The payload could not be verified.
    DownloadPayloadVerificationError = 12,
    /// Writing the passive partition failed.
    DownloadWriteError = 14,
    /// The written partition does not read back as the payload describes it.
    NewRootfsVerificationError = 15,
    /// The payload carries no signature.
    SignedDeltaPayloadExpected = 17,
    /// The payload's signature does not verify with the image's key.
    PayloadPubKeyVerificationError = 18,
    /// The payload does not start with `CrAU`.
    InvalidMetadataMagicString = 21,
    /// The payload's manifest does not parse.
    ManifestParseError = 23,
    /// An operation could not be applied (or is not one the client applies).
    OperationExecutionError = 28,
    /// An operation's data does not match its hash.
    OperationHashMismatch = 29,
    /// The update check's response was empty.
    OmahaRequestEmptyResponse = 30,
    /// The update check's response was not XML.
    OmahaRequestXmlParseError = 31,
    /// The update check's response lacks what an offer needs.
    OmahaResponseInvalid = 34,
    /// The server answered with an HTTP error.
    OmahaErrorInHttpResponse = 37,
    /// An operation carries no hash.
    OperationHashMissing = 38,
    /// A new version that rolled back before on this machine (Ferrite's own: the version
    /// is not installed again).
    UpdateIgnoredPerPolicy = 35,
}

impl ErrorCode {
    /// The number.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Flag bit: the machine is in developer mode.
pub const FLAG_DEV_MODE: u32 = 1 << 31;
/// Flag bit: the attempt resumed an earlier one.
pub const FLAG_RESUMED: u32 = 1 << 30;
/// Flag bit: a test image.
pub const FLAG_TEST_IMAGE: u32 = 1 << 29;
/// Flag bit: the server is not the production one.
pub const FLAG_TEST_OMAHA_URL: u32 = 1 << 28;

/// The code sent for HTTP status `status` on an update check: 2000 + status (at most 999).
pub fn http_error_code(status: u16) -> u32 {
    2000 + u32::from(status.min(999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_update_engines() {
        // A hash mismatch against a self-hosted server (updates.md §3.9).
        assert_eq!(
            ErrorCode::PayloadHashMismatch.code() | FLAG_TEST_OMAHA_URL,
            268_435_466
        );
        assert_eq!(http_error_code(404), 2404);
        assert_eq!(http_error_code(u16::MAX), 2999);
        for n in [0, 1, 2, 3, 9, 13, 14, 800] {
            assert_eq!(EventType::from_code(n).code(), n);
            assert_eq!(EventResult::from_code(n).code(), n);
        }
    }
}
