//! The worker: my registry behind whirligig's whole command line.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    whirligig_handler::main(my_service::registry(), whirligig_handler::binary!()).await
}
