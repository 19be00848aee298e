//! `whirligig dev`'s parts: the Pub/Sub emulator found, started and stopped
//! ([`emulator`]), and the scheduled routes fired at their times ([`cron`]).
//! Nothing here runs outside the dev environment.

pub(crate) mod cron;
pub(crate) mod emulator;
