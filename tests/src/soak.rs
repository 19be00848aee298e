//! The load of scripts/soak.sh: a mix of the demo tasks enqueued through
//! `Tasks` (READY rows, then published) at a steady rate, a share of them
//! published a second time straight to the emulator under the same task id,
//! and a manifest of what each task's final state must be. Faults and checks
//! are the script's; this only drives the enqueue API as a web service would,
//! retrying an enqueue that failed (the database restarting) under its id.
//!
//!   whirligig-soak enqueue COUNT RATE DUPLICATES SEED MANIFEST
//!       (COUNT tasks at RATE per second, a DUPLICATES share published twice;
//!       the configuration is the environment's, as for `whirligig enqueue`;
//!       one CSV line per task in MANIFEST, a JSON summary on stdout)

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use whirligig_handler::{Config, EnqueueError, Tasks, demo};
use whirligig_registry::{CallArguments, Naming, Registry, TaskMessage};

/// Enqueues in flight at once: a web service's concurrent requests.
const IN_FLIGHT: usize = 64;
/// How long one task's enqueue is retried before it counts as not enqueued.
const ENQUEUE_PATIENCE: Duration = Duration::from_secs(60);
/// A second publish comes this long after the first, at most.
const DUPLICATE_DELAY_MS: u64 = 20_000;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["enqueue", count, rate, duplicates, seed, manifest] => {
            Load::parse(count, rate, duplicates, seed).map(|load| (load, *manifest))
        }
        _ => Err("usage: whirligig-soak enqueue COUNT RATE DUPLICATES SEED MANIFEST".into()),
    };
    let done = match done {
        Ok((load, manifest)) => load.run(manifest).await,
        Err(error) => Err(error),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("whirligig-soak: {error}");
            ExitCode::from(2)
        }
    }
}

type Done = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What to enqueue, and how fast.
#[derive(Debug, Clone, Copy)]
struct Load {
    count: usize,
    rate: f64,
    duplicates: f64,
    seed: u64,
}

/// One task of the mix: its name, arguments, and the state it must end in.
#[derive(Debug, Clone)]
struct Planned {
    task_id: String,
    task_name: &'static str,
    kwargs: Map<String, Value>,
    /// `SUCCESSFUL`, `FAILED` (permanent) or `RETRYING` (fails retryably for
    /// ever: FAILED between deliveries, dead-lettered at the end).
    expected: &'static str,
    duplicate_after: Option<Duration>,
}

/// What the run did, printed as one JSON line.
#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    not_enqueued: AtomicU64,
    enqueue_retries: AtomicU64,
    duplicates_published: AtomicU64,
    duplicates_failed: AtomicU64,
}

impl Load {
    fn parse(
        count: &str,
        rate: &str,
        duplicates: &str,
        seed: &str,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let load =
            Self { count: count.parse()?, rate: rate.parse()?, duplicates: duplicates.parse()?, seed: seed.parse()? };
        if load.rate <= 0.0 || !(0.0..=1.0).contains(&load.duplicates) {
            return Err("RATE must be above 0 and DUPLICATES between 0 and 1".into());
        }
        Ok(load)
    }

    /// The mix, drawn from the seed: the same seed plans the same tasks.
    fn plan(&self) -> Vec<Planned> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        (0..self.count)
            .map(|index| {
                let (task_name, kwargs, expected) = draw(&mut rng, index);
                let duplicate = rng.gen_bool(self.duplicates);
                let duplicate_after = duplicate.then(|| Duration::from_millis(rng.gen_range(0..DUPLICATE_DELAY_MS)));
                let task_id = format!("soak-{}-{index:05}", self.seed);
                Planned { task_id, task_name, kwargs, expected, duplicate_after }
            })
            .collect()
    }

    async fn run(self, manifest: &str) -> Done {
        let plan = self.plan();
        write_manifest(manifest, &plan)?;
        let registry = Arc::new(demo::registry()?);
        let config = Config::from_env(&registry)?;
        let tasks = Tasks::from_config(registry.clone(), &config).await?;
        let republisher = Arc::new(Republisher::new(&registry, &config)?);
        let counters = Arc::new(Counters::default());
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let start = Instant::now();
        let mut handles = Vec::with_capacity(plan.len());
        for (index, planned) in plan.into_iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_secs_f64(index as f64 / self.rate)).await;
            let permit = slots.clone().acquire_owned().await?;
            let (tasks, republisher, counters) = (tasks.clone(), republisher.clone(), counters.clone());
            handles.push(tokio::spawn(async move {
                let enqueued = enqueue(&tasks, &planned, &counters).await;
                drop(permit);
                if enqueued && let Some(after) = planned.duplicate_after {
                    tokio::time::sleep(after).await;
                    republisher.publish_again(&planned, &counters).await;
                }
            }));
            if index % 1000 == 999 {
                eprintln!(
                    "whirligig-soak: {} enqueues started after {:.1} s",
                    index + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        let enqueues_ended = start.elapsed();
        for handle in handles {
            handle.await?;
        }
        let line = json!({
            "tasks": self.count,
            "enqueued": counters.enqueued.load(Ordering::Relaxed),
            "not_enqueued": counters.not_enqueued.load(Ordering::Relaxed),
            "enqueue_retries": counters.enqueue_retries.load(Ordering::Relaxed),
            "duplicates_published": counters.duplicates_published.load(Ordering::Relaxed),
            "duplicates_failed": counters.duplicates_failed.load(Ordering::Relaxed),
            "enqueue_seconds": round(enqueues_ended.as_secs_f64()),
            "seconds": round(start.elapsed().as_secs_f64()),
        });
        println!("{line}");
        Ok(())
    }
}

/// One task of the mix, by weight: mostly tasks that succeed (a fifth after
/// failing), some that fail for good, a few that fail retryably for ever.
/// `sleep` is a small share: the emulator pushes at most two messages of a
/// subscription at a time (two push loops, each waiting for its answer), so
/// its sleeps run two at a time whatever the instances could take.
fn draw(rng: &mut StdRng, index: usize) -> (&'static str, Map<String, Value>, &'static str) {
    let kwargs = |value: Value| value.as_object().cloned().unwrap_or_default();
    match rng.gen_range(0..100) {
        0..42 => ("noop", Map::new(), "SUCCESSFUL"),
        42..73 => ("echo", kwargs(json!({"index": index, "text": "é".repeat(rng.gen_range(0..64))})), "SUCCESSFUL"),
        73..93 => ("flaky", kwargs(json!({"succeed_on": rng.gen_range(2..=3)})), "SUCCESSFUL"),
        93..96 => ("sleep", kwargs(json!({"ms": rng.gen_range(50..=1200)})), "SUCCESSFUL"),
        96..98 => ("permanent", Map::new(), "FAILED"),
        98 => ("fail", Map::new(), "RETRYING"),
        _ => ("panic", Map::new(), "RETRYING"),
    }
}

fn write_manifest(path: &str, plan: &[Planned]) -> Done {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "task_id,task_name,expected,duplicated")?;
    for planned in plan {
        let duplicated = planned.duplicate_after.is_some();
        writeln!(file, "{},{},{},{duplicated}", planned.task_id, planned.task_name, planned.expected)?;
    }
    file.flush()?;
    Ok(())
}

/// Enqueues `planned` under its id, retrying what may pass on a later try
/// (the database or Pub/Sub unreachable); true once it is enqueued.
async fn enqueue(tasks: &Tasks, planned: &Planned, counters: &Counters) -> bool {
    let deadline = Instant::now() + ENQUEUE_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        let call = CallArguments { args: Vec::new(), kwargs: planned.kwargs.clone() };
        let error = match tasks.enqueue_json(planned.task_name, call, Some(planned.task_id.clone())).await {
            Ok(_) => {
                counters.enqueued.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(error) => error,
        };
        let retryable = matches!(error, EnqueueError::Store(_) | EnqueueError::Publish(_));
        if !retryable || Instant::now() + pause > deadline {
            eprintln!("whirligig-soak: {} not enqueued: {error}", planned.task_id);
            counters.not_enqueued.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        counters.enqueue_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Publishes a task's message a second time, straight to the emulator's
/// REST API, as a publisher retrying a publish whose answer it lost would.
#[derive(Debug)]
struct Republisher {
    http: reqwest::Client,
    /// `http://{PUBSUB_EMULATOR_HOST}/v1/projects/{project}/topics/`.
    topics_url: String,
    naming: Naming,
    registry: Arc<Registry>,
}

impl Republisher {
    fn new(registry: &Arc<Registry>, config: &Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let host = std::env::var("PUBSUB_EMULATOR_HOST").map_err(|_| "PUBSUB_EMULATOR_HOST must be set")?;
        let project = config.pubsub_project().ok_or("GCP_PROJECT_ID must be set")?;
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            topics_url: format!("http://{host}/v1/projects/{project}/topics/"),
            naming: config.naming.clone(),
            registry: registry.clone(),
        })
    }

    async fn publish_again(&self, planned: &Planned, counters: &Counters) {
        let published = match self.publish(planned).await {
            Ok(()) => &counters.duplicates_published,
            Err(error) => {
                eprintln!("whirligig-soak: {} not published again: {error}", planned.task_id);
                &counters.duplicates_failed
            }
        };
        published.fetch_add(1, Ordering::Relaxed);
    }

    async fn publish(&self, planned: &Planned) -> Done {
        let route = self.registry.get(planned.task_name).ok_or("a task of the demo registry")?;
        let mut message = TaskMessage::new(planned.task_name, Vec::new(), planned.kwargs.clone());
        message.task_id.clone_from(&planned.task_id);
        let data = base64::engine::general_purpose::STANDARD.encode(message.to_json());
        let body = json!({"messages": [{"data": data}]}).to_string();
        let url = format!("{}{}:publish", self.topics_url, route.topic_name(&self.naming));
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        drop(response);
        Ok(())
    }
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
