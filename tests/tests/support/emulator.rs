//! The Pub/Sub emulator, started by scripts/test.sh: a REST client for tests.
