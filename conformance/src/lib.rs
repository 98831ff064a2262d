//! RFC trace corpus and its runner, interop tests
