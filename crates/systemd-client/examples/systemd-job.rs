//! Runs one job on a systemd reached at a bus address and prints the result:
//! `systemd-job ADDRESS start|stop|restart|... UNIT`, or `systemd-job ADDRESS reload`.
#![allow(clippy::print_stdout)]

use systemd_client::{DbusSystemd, JobKind, Systemd};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (address, verb) = match (args.get(1), args.get(2)) {
        (Some(a), Some(v)) => (a, v),
        _ => return Err("usage: systemd-job ADDRESS VERB [UNIT]".into()),
    };
    let mut systemd = DbusSystemd::at(address)?;
    if verb == "reload" {
        systemd.reload()?;
        println!("reloaded");
        return Ok(());
    }
    let kind = JobKind::from_command(verb).ok_or("unknown verb")?;
    let unit = args.get(3).ok_or("missing unit")?;
    println!("{}", systemd.run_job(kind, unit, "replace")?);
    Ok(())
}
