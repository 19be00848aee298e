//! The demo app: the example tasks of [`whirligig_handler::demo`] behind the
//! whole whirligig command line.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    whirligig_handler::main(whirligig_handler::demo::registry(), whirligig_handler::binary!()).await
}
