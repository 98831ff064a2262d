//! `sqmail newu` (qmail-newu): users/assign → users/cdb, atomically; and
//! the atomic cdb writer it shares with `sqmail recipients`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sqmail_core::assign;

/// Compile `<qmail_home>/users/assign` into `users/cdb` through
/// `users/cdb.tmp` and a rename, so qmail-lspawn never sees half a cdb.
pub fn newu(qmail_home: &Path) -> Result<(), String> {
    let users = qmail_home.join("users");
    let assign_path = users.join("assign");
    let text = fs::read(&assign_path)
        .map_err(|e| format!("unable to read {}: {e}", assign_path.display()))?;
    let shown = assign_path.to_string_lossy();
    let assignments = assign::parse(&shown, &text).map_err(|e| e.to_string())?;
    write_cdb(&users.join("cdb"), assign::cdb_records(&assignments))
}

/// Writes `records` as the cdb `target` (mode 0644) through `target.tmp`,
/// fsynced, then renamed over `target`: a reader (a daemon that reopens it
/// per lookup) sees the old file or the new one, never half of one.
pub fn write_cdb(
    target: &Path,
    records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let werr = |e: std::io::Error| format!("unable to write {}: {e}", tmp.display());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(tmp)
        .map_err(werr)?;
    let mut cdb = cdb::CDBMake::new(file.try_clone().map_err(werr)?).map_err(werr)?;
    for (k, v) in records {
        cdb.add(&k, &v).map_err(werr)?;
    }
    cdb.finish().map_err(werr)?;
    file.sync_all().map_err(werr)?;
    drop(file);
    fs::rename(tmp, target).map_err(|e| {
        format!(
            "unable to move {} to {}: {e}",
            tmp.display(),
            target.display()
        )
    })?;
    // Make the rename itself durable.
    if let Some(dir) = target.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}
