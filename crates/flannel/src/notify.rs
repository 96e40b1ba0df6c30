//! `sd_notify(READY=1)`: flanneld.service is `Type=notify`, so units ordered after it start
//! only once subnet.env is written.

use std::os::unix::net::UnixDatagram;

/// Tells the service manager `state` (e.g. `READY=1`) when it asked (`NOTIFY_SOCKET`);
/// without that variable it does nothing.
///
/// # Errors
/// The socket cannot be reached.
pub fn notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}
