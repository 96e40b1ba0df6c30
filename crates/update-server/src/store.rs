//! The update service's records in SQLite: releases on channels, groups with their rollout
//! policy, instances and their event history. Every write is one transaction; the database
//! survives restarts (WAL journal, `synchronous=FULL`).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS releases (
    version TEXT NOT NULL,
    channel TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    file TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (version, channel)
);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    updates_enabled INTEGER NOT NULL DEFAULT 1,
    paused INTEGER NOT NULL DEFAULT 0,
    safe_mode INTEGER NOT NULL DEFAULT 1,
    max_updates INTEGER NOT NULL DEFAULT 0,
    period_secs INTEGER NOT NULL DEFAULT 3600,
    update_timeout_secs INTEGER NOT NULL DEFAULT 3600
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    grp TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    offered TEXT,
    granted_at INTEGER,
    last_check INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    rollbacks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance TEXT NOT NULL,
    at INTEGER NOT NULL,
    type INTEGER NOT NULL,
    result INTEGER NOT NULL,
    code INTEGER,
    version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_instance ON events(instance, id);
";

/// A published release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `X.Y.Z`.
    pub version: String,
    /// `alpha`, `beta` or `stable`.
    pub channel: String,
    /// The payload's size.
    pub size: u64,
    /// Its SHA-256, base64.
    pub sha256: String,
    /// Its SHA-1, base64.
    pub sha1: String,
    /// The payload file.
    pub file: PathBuf,
}

/// A group's rollout policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name (what machines send as `track`).
    pub name: String,
    /// The channel it follows.
    pub channel: String,
    /// Updates on or off.
    pub updates_enabled: bool,
    /// Paused (by hand, or by safe mode after a failure).
    pub paused: bool,
    /// Pause on the first failure.
    pub safe_mode: bool,
    /// At most this many updates granted per period (0: no limit).
    pub max_updates: u32,
    /// The period, seconds.
    pub period_secs: u64,
    /// A granted update not completed in this long counts as failed.
    pub update_timeout_secs: u64,
}

/// One instance (machine) as the service knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its machine ID.
    pub id: String,
    /// Its group.
    pub group: String,
    /// The version it last reported running.
    pub version: String,
    /// `Idle`, `UpdateGranted`, `Downloading`, `Downloaded`, `Installed`, `Complete`,
    /// `Error`, `RolledBack`.
    pub status: String,
    /// The version offered to it, if any.
    pub offered: Option<String>,
    /// Unix time of its last check.
    pub last_check: i64,
    /// Failures reported.
    pub failures: u32,
    /// Rollbacks reported.
    pub rollbacks: u32,
}

/// One event an instance sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Unix time.
    pub at: i64,
    /// `eventtype`.
    pub kind: u32,
    /// `eventresult`.
    pub result: u32,
    /// `errorcode`.
    pub code: Option<u32>,
    /// The version the instance ran.
    pub version: String,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Compares two versions: semantic versions by their rules; anything else is older than
/// every semantic version.
pub fn newer(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a > b,
        (Ok(_), Err(_)) => true,
        _ => false,
    }
}

impl Store {
    /// Opens (or creates) the database at `path`; the channels' default groups are made.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let conn = Connection::open(path).map_err(|e| Error::db(path, e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store
            .conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(|e| Error::db(path, e))?;
        store
            .conn
            .execute_batch(SCHEMA)
            .map_err(|e| Error::db(path, e))?;
        for ch in ["alpha", "beta", "stable"] {
            store
                .conn
                .execute(
                    "INSERT OR IGNORE INTO groups (name, channel) VALUES (?1, ?1)",
                    params![ch],
                )
                .map_err(|e| store.err(e))?;
        }
        Ok(store)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::db(&self.path, e)
    }

    /// Publishes `r` (again: replaces it).
    pub fn publish(&self, r: &Release, now: i64) -> Result<(), Error> {
        if semver::Version::parse(&r.version).is_err() {
            return Err(Error::BadVersion(r.version.clone()));
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO releases VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.version,
                    r.channel,
                    i64::try_from(r.size).unwrap_or(i64::MAX),
                    r.sha256,
                    r.sha1,
                    r.file.to_string_lossy(),
                    now
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The newest release on `channel`.
    pub fn latest(&self, channel: &str) -> Result<Option<Release>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT version, channel, size, sha256, sha1, file FROM releases WHERE channel = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![channel], release_row)
            .map_err(|e| self.err(e))?;
        let mut best: Option<Release> = None;
        for r in rows {
            let r = r.map_err(|e| self.err(e))?;
            if best.as_ref().is_none_or(|b| newer(&r.version, &b.version)) {
                best = Some(r);
            }
        }
        Ok(best)
    }

    /// The release `version` on any channel (for serving its file).
    pub fn release(&self, version: &str) -> Result<Option<Release>, Error> {
        self.conn
            .query_row(
                "SELECT version, channel, size, sha256, sha1, file FROM releases WHERE version = ?1 LIMIT 1",
                params![version],
                release_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The group `name`.
    pub fn group(&self, name: &str) -> Result<Option<Group>, Error> {
        self.conn
            .query_row(
                "SELECT name, channel, updates_enabled, paused, safe_mode, max_updates, period_secs, update_timeout_secs FROM groups WHERE name = ?1",
                params![name],
                group_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every group, by name.
    pub fn groups(&self) -> Result<Vec<Group>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, channel, updates_enabled, paused, safe_mode, max_updates, period_secs, update_timeout_secs FROM groups ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], group_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every published release: (release, publication time), newest publication first.
    pub fn releases(&self) -> Result<Vec<(Release, i64)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT version, channel, size, sha256, sha1, file, published_at FROM releases ORDER BY published_at DESC, version")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |row| Ok((release_row(row)?, row.get(6)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The most recent `limit` events of every instance, oldest first: (instance, event).
    pub fn recent_events(&self, limit: u32) -> Result<Vec<(String, EventRecord)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT instance, at, type, result, code, version FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![limit], |row| {
                Ok((
                    row.get(0)?,
                    EventRecord {
                        at: row.get(1)?,
                        kind: row.get(2)?,
                        result: row.get(3)?,
                        code: row.get(4)?,
                        version: row.get(5)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Creates or replaces a group.
    pub fn set_group(&self, g: &Group) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO groups VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    g.name,
                    g.channel,
                    g.updates_enabled,
                    g.paused,
                    g.safe_mode,
                    g.max_updates,
                    i64::try_from(g.period_secs).unwrap_or(i64::MAX),
                    i64::try_from(g.update_timeout_secs).unwrap_or(i64::MAX)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Pauses or resumes a group.
    pub fn set_paused(&self, group: &str, paused: bool) -> Result<bool, Error> {
        let n = self
            .conn
            .execute(
                "UPDATE groups SET paused = ?2 WHERE name = ?1",
                params![group, paused],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// How many updates `group` granted since `since`.
    pub fn granted_since(&self, group: &str, since: i64) -> Result<u32, Error> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM instances WHERE grp = ?1 AND granted_at >= ?2",
                params![group, since],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// The instance `id`.
    pub fn instance(&self, id: &str) -> Result<Option<Instance>, Error> {
        self.conn
            .query_row(
                "SELECT id, grp, version, status, offered, last_check, failures, rollbacks FROM instances WHERE id = ?1",
                params![id],
                instance_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every instance, by ID.
    pub fn instances(&self) -> Result<Vec<Instance>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, grp, version, status, offered, last_check, failures, rollbacks FROM instances ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], instance_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records a check-in: the instance's group and version now, its last check.
    pub fn check_in(
        &self,
        id: &str,
        app: &str,
        group: &str,
        version: &str,
        now: i64,
    ) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO instances (id, app, grp, version, status, last_check, first_seen)
                 VALUES (?1, ?2, ?3, ?4, 'Idle', ?5, ?5)
                 ON CONFLICT(id) DO UPDATE SET app = ?2, grp = ?3, version = ?4, last_check = ?5",
                params![id, app, group, version, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records that `version` was offered to the instance.
    pub fn grant(&self, id: &str, version: &str, now: i64) -> Result<(), Error> {
        self.conn
            .execute(
                "UPDATE instances SET status = 'UpdateGranted', offered = ?2, granted_at = ?3 WHERE id = ?1",
                params![id, version, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records an event and the instance status it leads to; a failure counts (and a
    /// rollback too), and pauses the group when it is in safe mode.
    pub fn event(&self, id: &str, e: &EventRecord, status: Option<&str>) -> Result<(), Error> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO events (instance, at, type, result, code, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, e.at, e.kind, e.result, e.code, e.version],
        )
        .map_err(|e| self.err(e))?;
        if let Some(status) = status {
            tx.execute(
                "UPDATE instances SET status = ?2 WHERE id = ?1",
                params![id, status],
            )
            .map_err(|e| self.err(e))?;
        }
        if e.result == 0 {
            let rollback = i32::from(e.code == Some(44));
            tx.execute(
                "UPDATE instances SET failures = failures + 1, rollbacks = rollbacks + ?2 WHERE id = ?1",
                params![id, rollback],
            )
            .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE groups SET paused = 1 WHERE safe_mode = 1 AND name = (SELECT grp FROM instances WHERE id = ?1)",
                params![id],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The instance's events, oldest first.
    pub fn events(&self, id: &str) -> Result<Vec<EventRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT at, type, result, code, version FROM events WHERE instance = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |row| {
                Ok(EventRecord {
                    at: row.get(0)?,
                    kind: row.get(1)?,
                    result: row.get(2)?,
                    code: row.get(3)?,
                    version: row.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn group_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        name: row.get(0)?,
        channel: row.get(1)?,
        updates_enabled: row.get(2)?,
        paused: row.get(3)?,
        safe_mode: row.get(4)?,
        max_updates: row.get(5)?,
        period_secs: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        update_timeout_secs: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
    })
}

fn release_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        version: row.get(0)?,
        channel: row.get(1)?,
        size: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        sha256: row.get(3)?,
        sha1: row.get(4)?,
        file: PathBuf::from(row.get::<_, String>(5)?),
    })
}

fn instance_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Instance> {
    Ok(Instance {
        id: row.get(0)?,
        group: row.get(1)?,
        version: row.get(2)?,
        status: row.get(3)?,
        offered: row.get(4)?,
        last_check: row.get(5)?,
        failures: row.get(6)?,
        rollbacks: row.get(7)?,
    })
}
