//! What scripts/bench.sh needs beside the binary under test: a bare hyper
//! server (the HTTP ceiling of the machine), a loopback OIDC issuer and its
//! token, push bodies with unique task ids, and the store's claim and finish
//! as a pgbench script (the database's ceiling).
//!
//!   whirligig-bench ceiling-http PORT
//!   whirligig-bench issuer ENV_FILE          (writes the settings and a token, then serves)
//!   whirligig-bench bodies TASK COUNT FILE [KWARGS]   (one push body per line)
//!   whirligig-bench pgbench-script FILE
//!   whirligig-bench delay-proxy PORT TARGET_PORT MS   (client-to-server bytes held MS ms)

#[path = "../tests/support/issuer.rs"]
#[allow(dead_code, unreachable_pub)]
mod issuer;

use std::convert::Infallible;
use std::io::Write as _;
use std::process::ExitCode;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["ceiling-http", port] => ceiling_http(port).await,
        ["issuer", env_file] => serve_issuer(env_file).await,
        ["bodies", task, count, file] => bodies(task, count, file, "{}"),
        ["bodies", task, count, file, kwargs] => bodies(task, count, file, kwargs),
        ["pgbench-script", file] => pgbench_script(file),
        ["delay-proxy", port, target, ms] => delay_proxy(port, target, ms).await,
        _ => Err(
            "usage: whirligig-bench ceiling-http PORT | issuer ENV_FILE | bodies TASK COUNT FILE | pgbench-script FILE"
                .into(),
        ),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("whirligig-bench: {error}");
            ExitCode::from(2)
        }
    }
}

type Done = Result<(), Box<dyn std::error::Error>>;

/// Reads the whole body and answers 200, over HTTP/1.1 or h2c like the
/// service: all a push endpoint could cost without doing any work.
async fn ceiling_http(port: &str) -> Done {
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Writes the variables a service needs to trust the issuer, and a token,
/// to `env_file`; then serves the keys until killed.
async fn serve_issuer(env_file: &str) -> Done {
    let key = issuer::Key::generated(0);
    let issuer = issuer::Issuer::start(&key).await;
    let settings = issuer.settings();
    let lines = [
        format!("TASKS_OIDC_ISSUER={}", settings.issuer),
        format!("TASKS_OIDC_JWKS_URL={}", settings.jwks_url),
        format!("TASKS_OIDC_AUDIENCE={}", settings.audience),
        format!("TASKS_SERVICE_ACCOUNT={}", settings.service_account),
        format!("TOKEN={}", issuer.token(&key)),
    ];
    std::fs::write(env_file, lines.join("\n") + "\n")?;
    std::future::pending::<()>().await;
    Ok(())
}

/// `count` push bodies of `task` with `kwargs`, one per line, each with its own task id.
fn bodies(task: &str, count: &str, file: &str, kwargs: &str) -> Done {
    let kwargs: serde_json::Value = serde_json::from_str(kwargs)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for n in 0..count.parse::<u64>()? {
        let payload =
            serde_json::json!({"task_id": format!("bench-{n}"), "task_name": task, "args": [], "kwargs": kwargs});
        let data = base64::engine::general_purpose::STANDARD.encode(payload.to_string());
        let envelope = serde_json::json!({
            "message": {"data": data, "messageId": format!("{n}")},
            "subscription": "projects/bench/subscriptions/bench",
        });
        writeln!(out, "{envelope}")?;
    }
    Ok(out.flush()?)
}

/// The store's claim and finish of one new task, as the store sends a batch
/// of one, in pgbench's syntax: two autocommit statements per task, the
/// claim's commit asynchronous as the store's is.
fn pgbench_script(file: &str) -> Done {
    let (claim, finish) = whirligig_handler::bench::claim_and_finish();
    let task_id = "array['bench-' || :n]";
    let claim_values = [
        task_id,
        "array['noop']",
        "array['[]']",
        "array['{}']",
        "array['m']",
        "array[now()]",
        "array[300]",
        "array[null]",
    ];
    let finish_values =
        [task_id, "array[1]", "array['SUCCESSFUL']", "array['null']", "array[null]", "array[null]", "array[false]"];
    let script = format!(
        "\\set n random(1, 2000000000)\n{};\n{};\n",
        one_line(&parameters(claim, &claim_values)),
        one_line(&parameters(finish, &finish_values)),
    );
    Ok(std::fs::write(file, script)?)
}

/// `sql` with `$1`.. replaced by `values` (at most nine parameters).
fn parameters(sql: &str, values: &[&str]) -> String {
    values.iter().enumerate().rev().fold(sql.to_owned(), |sql, (at, value)| sql.replace(&format!("${}", at + 1), value))
}

/// pgbench reads one statement per line.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Forwards connections on `port` to `target` on loopback, holding every
/// chunk from the client `ms` milliseconds (at least: the timer's resolution
/// is a millisecond), so each round trip costs that much more, as a database
/// in another zone would. Used where netem is not in the kernel.
async fn delay_proxy(port: &str, target: &str, ms: &str) -> Done {
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    let target: u16 = target.parse()?;
    let delay = std::time::Duration::from_millis(ms.parse()?);
    loop {
        let (client, _) = listener.accept().await?;
        let server = tokio::net::TcpStream::connect(("127.0.0.1", target)).await?;
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (client_reads, mut client_writes) = client.into_split();
        let (mut server_reads, server_writes) = server.into_split();
        tokio::spawn(delayed(client_reads, server_writes, delay));
        tokio::spawn(async move { tokio::io::copy(&mut server_reads, &mut client_writes).await });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it arrived, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (chunks, mut arriving) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0 || chunks.send((tokio::time::Instant::now() + delay, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    });
    while let Some((due, chunk)) = arriving.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
}
