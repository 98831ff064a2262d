//! The bridge between a [`Server`] and whoever answers its questions.
//!
//! Both runtimes drive sessions through [`pump`], so the order in which
//! events are handled is defined once. A host answers most requests on the
//! spot; work that blocks (committing a message with fsync) it hands back
//! as a [`Job`] that the runtime runs off its event loop and feeds back
//! with [`Server::answer`].

use std::time::Instant;

use super::server::{Event, Request, Server, Ticket, Verdict};

/// Blocking work whose result answers a pending request.
pub type Job = Box<dyn FnOnce() -> Verdict + Send + 'static>;

/// A host's answer: now, or after a blocking job.
pub enum Decision {
    Now(Verdict),
    Later(Job),
}

/// What a session's host does with the machine's events.
pub trait SmtpHost {
    fn decide(&mut self, request: Request) -> Decision;
    /// Message bytes (LF line endings, unstuffed) for the open message.
    fn message_data(&mut self, data: &[u8]);
    /// Discard the open message, if any.
    fn abort_message(&mut self);
}

/// What the runtime must do after [`pump`].
pub enum Step {
    /// Send the transmit buffer; wait for input or the timeout.
    Wait,
    /// Run the job off the loop, then `answer(ticket, job())` and pump again.
    Blocked(Ticket, Job),
    /// Send the transmit buffer, then close.
    Close,
}

/// Hands every pending event to `host` until the machine waits.
pub fn pump<H: SmtpHost + ?Sized>(server: &mut Server, host: &mut H, now: Instant) -> Step {
    while let Some(event) = server.poll_event() {
        match event {
            Event::Body => {
                host.message_data(server.body());
                server.consume_body();
            }
            Event::AbortMessage => host.abort_message(),
            Event::Close => {
                host.abort_message();
                return Step::Close;
            }
            Event::Decide(ticket, request) => match host.decide(request) {
                Decision::Now(verdict) => {
                    // The ticket is the one just polled, so this cannot fail.
                    let _ = server.answer(now, ticket, verdict);
                }
                Decision::Later(job) => return Step::Blocked(ticket, job),
            },
        }
    }
    Step::Wait
}
