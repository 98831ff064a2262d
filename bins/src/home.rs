//! The qmail home and its files.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Home {
    path: PathBuf,
}

impl Home {
    pub fn new(path: PathBuf) -> Self {
        Home { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn control(&self, name: &str) -> PathBuf {
        self.path.join("control").join(name)
    }

    /// A control file's bytes, `None` when it does not exist; the form the
    /// control loaders in core and queue take.
    pub fn control_bytes(&self, name: &str) -> sqmail_core::control::ReadResult {
        let path = self.control(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// A control file's text, `None` when it does not exist (qmail treats
    /// a missing control file as its default). Other errors are reported
    /// with the file's path.
    pub fn read_control(&self, name: &str) -> io::Result<Option<String>> {
        let path = self.control(name);
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not valid UTF-8", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}
