//! locksmith, CoreOS's reboot coordinator (updates.md §5), rebuilt:
//!
//! - [`semaphore`]: the cluster-wide reboot semaphore's value and rules, as locksmith
//!   wrote them (its JSON, its error texts).
//! - [`etcd`]: that semaphore in etcd's v3 keyspace under CoreOS's key, as Flatcar's
//!   locksmith keeps it: created on version 0, changed by compare-and-swap transactions.
//! - [`window`]: reboot windows (`Thu 04:00` + `1h`), with locksmith's parse rules and
//!   test vectors.
//! - [`config`]: locksmithd's environment (`REBOOT_STRATEGY`, `LOCKSMITHD_*`).
//! - [`fleetlock`]: the FleetLock protocol (`/v1/pre-reboot`, `/v1/steady-state`) served on
//!   the same semaphores, so Zincati-style clients and locksmithd share one lock.
//! - `locksmithd` (binary): waits for update_engine's `UPDATED_NEED_REBOOT`, then the
//!   window, then (etcd-lock) a slot of the semaphore, then reboots through logind; after
//!   a boot it gives its slot back once the running `/usr` is marked good — not while it
//!   is on trial, so a bad release stops at the first machine.
//! - `locksmithctl` (binary): `status`, `lock`, `unlock`, `set-max`, `reboot`,
//!   `send-need-reboot` with locksmith's outputs.
//!
//! Invariant: the semaphore is only written by a compare-and-swap on the version read, so
//! two writers never both succeed from the same state.

pub mod config;
pub mod etcd;
pub mod fleetlock;
pub mod semaphore;
pub mod window;

/// Asks logind for a reboot (not interactive), as locksmith did; without logind, systemd
/// itself (`reboot.target`).
pub async fn logind_reboot() -> zbus::Result<()> {
    let conn = zbus::Connection::system().await?;
    let logind = conn
        .call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "Reboot",
            &(false,),
        )
        .await;
    if logind.is_ok() {
        return Ok(());
    }
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.systemd1.Manager"),
        "StartUnit",
        &("reboot.target", "replace-irreversibly"),
    )
    .await
    .map(drop)
}

/// Whether the running `/usr` is marked good (not on trial); true where there are no
/// Ferrite slots to ask.
pub fn running_usr_good() -> bool {
    update_engine::slots::machine_slots(std::path::Path::new("/"))
        .active_good()
        .unwrap_or(true)
}
