//! Loopback stubs of Google APIs that have no emulator.
