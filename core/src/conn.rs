//! What a server knows about the connection it serves: the ucspi-tcp
//! environment (`TCPREMOTEIP`, `TCPREMOTEHOST`, ...) as tcpserver sets it,
//! or the same facts filled in by a daemon's own accept loop.

/// Connection facts, named after the ucspi-tcp variables they come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// `TCPREMOTEIP`: the client's address in text form.
    pub remote_ip: String,
    /// `TCPREMOTEHOST`: the client's host name from reverse DNS, if any.
    pub remote_host: Option<String>,
    /// `TCPREMOTEINFO`: the ident (or, later, authenticated) user, if any.
    pub remote_info: Option<String>,
    /// `TCPLOCALIP`: the address the client connected to.
    pub local_ip: String,
    /// `TCPLOCALHOST`: this server's name for that address, if any.
    pub local_host: Option<String>,
    /// `RELAYCLIENT`: present means the client may relay; the value is
    /// appended to every recipient, as qmail-smtpd does.
    pub relay_client: Option<String>,
    /// `RECIPIENTS450` (s/qmail): set means a recipient that
    /// `control/recipients` does not know gets a temporary 450 instead of
    /// 550, so senders retry while a mailbox is being set up.
    pub recipients_450: bool,
}
