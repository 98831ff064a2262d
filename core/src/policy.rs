//! Policy: the pure decisions qmail-smtpd makes from its control files and
//! the connection's facts. (Being written; the `Lookup` trait is fixed.)

/// A set of keys held outside the core, such as a cdb file
/// (`morercpthosts.cdb`, `recipients` cdbs). The host opens the file; the
/// core only asks whether a key is in it.
pub trait Lookup: Send + Sync {
    /// Is `key` present? An I/O error reading the set counts as absent
    /// only if the implementation says so; it may instead report it via
    /// `Err`, which the policy turns into a temporary failure.
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError>;
}

/// The backing store of a `Lookup` could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupError(pub String);

impl<S: std::hash::BuildHasher + Send + Sync> Lookup for std::collections::HashSet<Vec<u8>, S> {
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError> {
        Ok(std::collections::HashSet::contains(self, key))
    }
}
