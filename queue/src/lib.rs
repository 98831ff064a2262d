//! the durable qmail queue, the scheduler and local delivery
