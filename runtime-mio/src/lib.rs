//! drives sqmail-core machines on a mio epoll loop
