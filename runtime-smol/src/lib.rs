//! drives sqmail-core machines on smol
