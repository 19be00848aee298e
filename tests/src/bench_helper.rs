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
//!   whirligig-bench enqueue HOST:PORT|stub CALLERS WARMUP SECONDS
//!       (`Tasks` driven by CALLERS concurrent callers against the Pub/Sub
//!       emulator at HOST:PORT, or a loopback stub of Pub/Sub and the metadata
//!       server served here; prints one JSON line)

#[path = "../tests/support/issuer.rs"]
#[allow(dead_code, unreachable_pub)]
mod issuer;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;
use whirligig_handler::{Config, Tasks, demo};

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
        ["enqueue", target, callers, warmup, seconds] => enqueue(target, callers, warmup, seconds).await,
        _ => Err("usage: whirligig-bench ceiling-http PORT | issuer ENV_FILE | bodies TASK COUNT FILE | \
                  pgbench-script FILE | delay-proxy PORT TARGET_PORT MS | enqueue HOST:PORT|stub CALLERS WARMUP SECONDS"
            .into()),
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
/// claim's commit asynchronous as the store's is. The task's number is its
/// claim's fence.
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
        "array[:n]",
    ];
    let finish_values = [
        task_id,
        "array[1]",
        "array['SUCCESSFUL']",
        "array['null']",
        "array[null]",
        "array[null]",
        "array[false]",
        "array[:n]",
    ];
    let (claim, finish) = (parameters(claim, &claim_values), parameters(finish, &finish_values));
    if claim.contains('$') || finish.contains('$') {
        return Err("the store's claim or finish takes a parameter the pgbench script does not give".into());
    }
    let script = format!("\\set n random(1, 2000000000)\n{};\n{};\n", one_line(&claim), one_line(&finish));
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

/// The project the enqueue scenarios publish in (the emulator takes any).
const ENQUEUE_PROJECT: &str = "whirligig-bench";

/// `callers` concurrent callers enqueue `noop` through `Tasks` as fast as
/// each call returns: `warmup` (seconds, `2` or `2s`) unmeasured, then
/// `seconds` measured. `target` is the emulator's `host:port` (the topic is
/// created first, under a namespace of this run's own) or `stub`.
async fn enqueue(target: &str, callers: &str, warmup: &str, seconds: &str) -> Done {
    let callers: usize = callers.parse()?;
    let warmup = Duration::from_secs_f64(warmup.trim_end_matches('s').parse()?);
    let measured = Duration::from_secs_f64(seconds.trim_end_matches('s').parse()?);
    let namespace = format!("b{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let mut vars = vec![
        ("GCP_PROJECT_ID", ENQUEUE_PROJECT.to_owned()),
        ("TASKS_NAMESPACE", namespace),
        // Every call bounded: a stuck publish fails instead of holding the run.
        ("TASKS_PUBLISH_TIMEOUT_MS", "10000".to_owned()),
    ];
    let stub = if target == "stub" {
        let stub = Stub::start().await?;
        vars.push(("TASKS_BACKEND", "pubsub".to_owned()));
        vars.push(("TASKS_PUBSUB_ENDPOINT", format!("http://{}", stub.address)));
        vars.push(("GCE_METADATA_HOST", stub.address.to_string()));
        Some(stub)
    } else if ["127.", "localhost:", "[::1]:"].iter().any(|prefix| target.starts_with(prefix)) {
        vars.push(("PUBSUB_EMULATOR_HOST", target.to_owned()));
        None
    } else {
        return Err(format!("the emulator must be on loopback, not {target:?}").into());
    };
    let registry = Arc::new(demo::registry()?);
    let map: HashMap<String, String> = vars.into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    let config = Config::from_lookup(&registry, &|name| map.get(name).cloned())?;
    let topic = registry.get("noop").ok_or("no noop task in the demo registry")?.topic_name(&config.naming);
    if stub.is_none() {
        create_topic(target, &topic).await?;
    }
    let tasks = Tasks::from_config(registry, &config).await?;

    let began = Instant::now();
    let (start, end) = (began + warmup, began + warmup + measured);
    let workers: Vec<_> = (0..callers).map(|_| tokio::spawn(caller(tasks.clone(), start, end))).collect();
    tokio::time::sleep_until(start).await;
    let before = stub.as_ref().map(|stub| stub.counts());
    let mut calls = Calls::default();
    for worker in workers {
        calls.merge(worker.await?);
    }
    let after = stub.as_ref().map(|stub| stub.counts());

    let elapsed = calls.last.unwrap_or(end).saturating_duration_since(start).as_secs_f64();
    calls.latencies.sort_unstable();
    let enqueues = calls.latencies.len();
    let mut line = serde_json::json!({
        "target": if stub.is_some() { "stub" } else { "emulator" },
        "topic": topic,
        "callers": callers,
        "enqueues": enqueues,
        "seconds": round(elapsed, 3),
        "enqueues_per_s": round(enqueues as f64 / elapsed.max(f64::EPSILON), 1),
        "p50_ms": percentile(&calls.latencies, 0.50),
        "p99_ms": percentile(&calls.latencies, 0.99),
        "max_ms": percentile(&calls.latencies, 1.0),
        "errors": calls.errors,
    });
    if let (Some(before), Some(after)) = (before, after) {
        let requests = after.requests - before.requests;
        let messages = after.messages - before.messages;
        line["publish_requests"] = requests.into();
        line["published_messages"] = messages.into();
        line["requests_per_enqueue"] = round(requests as f64 / (messages.max(1)) as f64, 4).into();
        line["token_requests"] = after.tokens.into();
    }
    if let Some(error) = &calls.first_error {
        line["first_error"] = error.as_str().into();
    }
    println!("{line}");
    Ok(())
}

/// What one caller saw in the measured window.
#[derive(Default)]
struct Calls {
    /// Of the enqueues that succeeded, in microseconds.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// When the last measured call returned.
    last: Option<Instant>,
}

impl Calls {
    fn merge(&mut self, other: Calls) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.last = self.last.max(other.last);
    }
}

/// Enqueues one call after another until `end`; the calls begun from `start` on count.
async fn caller(tasks: Tasks, start: Instant, end: Instant) -> Calls {
    let mut calls = Calls::default();
    loop {
        let began = Instant::now();
        if began >= end {
            return calls;
        }
        let result = tasks.enqueue(&demo::NOOP, ()).await;
        let done = Instant::now();
        if began < start {
            continue;
        }
        calls.last = Some(done);
        match result {
            Ok(_) => calls.latencies.push(u64::try_from((done - began).as_micros()).unwrap_or(u64::MAX)),
            Err(error) => {
                calls.errors += 1;
                calls.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// The nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|micros| round(*micros as f64 / 1000.0, 3))
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}

/// `PUT /v1/projects/{p}/topics/{t}` on the emulator; 409 (it exists) is fine.
async fn create_topic(host: &str, topic: &str) -> Done {
    // No proxy: an http_proxy in the environment must not see loopback.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let url = format!("http://{host}/v1/projects/{ENQUEUE_PROJECT}/topics/{topic}");
    let response = client.put(&url).header(http::header::CONTENT_TYPE, "application/json").body("{}").send().await?;
    let status = response.status();
    if !status.is_success() && status != http::StatusCode::CONFLICT {
        return Err(format!("creating {url}: {status} {}", response.text().await.unwrap_or_default()).into());
    }
    Ok(())
}

/// Pub/Sub's publish endpoint and the metadata server's token on one
/// loopback port, both answering at once: what enqueueing costs the caller
/// when Google costs nothing, and how many requests it makes.
struct Stub {
    address: std::net::SocketAddr,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    messages: AtomicU64,
    tokens: AtomicU64,
}

#[derive(Clone, Copy)]
struct Counts {
    requests: u64,
    messages: u64,
    tokens: u64,
}

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

impl Stub {
    async fn start() -> Result<Stub, Box<dyn std::error::Error>> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let serving = counters.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (builder, counters) = (builder.clone(), serving.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(counters.clone(), request));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Stub { address, counters })
    }

    fn counts(&self) -> Counts {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        Counts {
            requests: load(&self.counters.requests),
            messages: load(&self.counters.messages),
            tokens: load(&self.counters.tokens),
        }
    }
}

async fn answer(
    counters: Arc<Counters>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let respond = |status: u16, body: String| {
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Ok(response)
    };
    let path = request.uri().path().to_owned();
    if path == TOKEN_PATH {
        if request.headers().get("metadata-flavor").is_none_or(|flavor| flavor != "Google") {
            return respond(403, "Missing Metadata-Flavor:Google header.".to_owned());
        }
        counters.tokens.fetch_add(1, Ordering::SeqCst);
        return respond(200, r#"{"access_token":"bench-token","expires_in":3599,"token_type":"Bearer"}"#.to_owned());
    }
    if request.method() != http::Method::POST || !path.starts_with("/v1/projects/") || !path.ends_with(":publish") {
        return respond(404, r#"{"error":{"code":404,"message":"not found","status":"NOT_FOUND"}}"#.to_owned());
    }
    let Ok(body) = request.into_body().collect().await.map(|body| body.to_bytes()) else {
        return respond(400, r#"{"error":{"code":400,"message":"body","status":"INVALID_ARGUMENT"}}"#.to_owned());
    };
    let messages = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|publish| publish.get("messages").and_then(serde_json::Value::as_array).map(Vec::len));
    let Some(count) = messages.filter(|count| *count > 0) else {
        return respond(
            400,
            r#"{"error":{"code":400,"message":"no messages","status":"INVALID_ARGUMENT"}}"#.to_owned(),
        );
    };
    let count = count as u64;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let first = counters.messages.fetch_add(count, Ordering::SeqCst);
    let ids: Vec<String> = (first + 1..=first + count).map(|id| id.to_string()).collect();
    respond(200, serde_json::json!({ "messageIds": ids }).to_string())
}
