//! The status machine's states (updates.md §3.2) and the report `GetStatus` returns.

/// update_engine's status; the names go over D-Bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing going on.
    Idle,
    /// Asking the update service.
    CheckingForUpdate,
    /// An update was offered.
    UpdateAvailable,
    /// Downloading the payload.
    Downloading,
    /// Declared by CoreOS, never set.
    Verifying,
    /// Verifying, writing and installing the new `/usr`.
    Finalizing,
    /// Installed on the passive slot; a reboot is pending.
    UpdatedNeedReboot,
    /// Telling the update service about a failure.
    ReportingErrorEvent,
}

impl Status {
    /// The D-Bus name, e.g. `UPDATE_STATUS_IDLE`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Idle => "UPDATE_STATUS_IDLE",
            Status::CheckingForUpdate => "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            Status::UpdateAvailable => "UPDATE_STATUS_UPDATE_AVAILABLE",
            Status::Downloading => "UPDATE_STATUS_DOWNLOADING",
            Status::Verifying => "UPDATE_STATUS_VERIFYING",
            Status::Finalizing => "UPDATE_STATUS_FINALIZING",
            Status::UpdatedNeedReboot => "UPDATE_STATUS_UPDATED_NEED_REBOOT",
            Status::ReportingErrorEvent => "UPDATE_STATUS_REPORTING_ERROR_EVENT",
        }
    }

    /// The status named `name`.
    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::Idle,
            Status::CheckingForUpdate,
            Status::UpdateAvailable,
            Status::Downloading,
            Status::Verifying,
            Status::Finalizing,
            Status::UpdatedNeedReboot,
            Status::ReportingErrorEvent,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// `GetStatus`'s answer and `StatusUpdate`'s fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Unix time of the last successful check.
    pub last_checked_time: i64,
    /// Download progress, 0.0 to 1.0.
    pub progress: f64,
    /// The status.
    pub status: Status,
    /// The offered version (`0.0.0` before an offer).
    pub new_version: String,
    /// The offered payload's size.
    pub new_size: i64,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            last_checked_time: 0,
            progress: 0.0,
            status: Status::Idle,
            new_version: "0.0.0".into(),
            new_size: 0,
        }
    }
}

impl Report {
    /// `update_engine_client -status`'s lines.
    pub fn lines(&self) -> String {
        format!(
            "LAST_CHECKED_TIME={}\nPROGRESS={:.6}\nCURRENT_OP={}\nNEW_VERSION={}\nNEW_SIZE={}\n",
            self.last_checked_time,
            self.progress,
            self.status.name(),
            self.new_version,
            self.new_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_prints_as_update_engine_client_printed_it() {
        let r = Report {
            last_checked_time: 1_411_575_812,
            progress: 0.971_182,
            status: Status::Downloading,
            new_version: "0.0.0.0".into(),
            new_size: 103_093_532,
        };
        assert_eq!(
            r.lines(),
            "LAST_CHECKED_TIME=1411575812\nPROGRESS=0.971182\nCURRENT_OP=UPDATE_STATUS_DOWNLOADING\nNEW_VERSION=0.0.0.0\nNEW_SIZE=103093532\n"
        );
        for s in [Status::Idle, Status::UpdatedNeedReboot, Status::Verifying] {
            assert_eq!(Status::from_name(s.name()), Some(s));
        }
        assert_eq!(Status::from_name("IDLE"), None);
    }
}
