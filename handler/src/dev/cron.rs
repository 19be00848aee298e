//! Dev cron: every scheduled route fired at its fire times in its own time
//! zone, as Cloud Scheduler fires it in production, through a closure the
//! caller passes; this module owns only the timing, the kill switches and the
//! log lines. It does not check that it runs in dev: `whirligig dev` is its
//! only caller.

use std::iter::{self, Peekable};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use whirligig_registry::{Registry, Route, Schedule, Tz};

use crate::config::KillSwitches;

/// How late a fire may still be carried out. A time further past was slept
/// through (a laptop's lid closed), and firing a night's worth at once on
/// waking would be a burst Cloud Scheduler never sends.
const MISSED_AFTER: TimeDelta = TimeDelta::minutes(1);

/// The longest single sleep. Tokio's clock stops while the machine sleeps and
/// the system's does not, so a long wait is taken in steps that each read the
/// wall clock again.
const RECHECK: Duration = Duration::from_secs(10);

/// The wall time fire times are compared with: the system's clock, or a fixed
/// start that advances with tokio's clock, which a paused test runtime moves
/// on at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    /// `Some((wall, at))`: the time was `wall` at tokio's `at`. `None`: the system's clock.
    anchor: Option<(DateTime<Utc>, Instant)>,
}

impl WallClock {
    /// The system's clock, read afresh each time: unlike tokio's, it counts
    /// the time a laptop spends asleep.
    pub(crate) fn system() -> Self {
        Self { anchor: None }
    }

    /// A clock that reads `wall` now and advances with tokio's clock.
    #[cfg(test)]
    pub(crate) fn starting_at(wall: DateTime<Utc>) -> Self {
        Self { anchor: Some((wall, Instant::now())) }
    }

    /// The current wall time.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        match self.anchor {
            Some((wall, at)) => wall + at.elapsed(),
            None => Utc::now(),
        }
    }

    /// Sleeps until the clock reads `wall` or later; returns at once if it already does.
    pub(crate) async fn sleep_until(&self, wall: DateTime<Utc>) {
        while let Some(left) = self.until(wall) {
            tokio::time::sleep(left.min(RECHECK)).await;
        }
    }

    /// Whether the clock reads `wall` or later.
    fn has_reached(&self, wall: DateTime<Utc>) -> bool {
        self.until(wall).is_none()
    }

    /// How long until the clock reads `wall`; `None` once it does.
    fn until(&self, wall: DateTime<Utc>) -> Option<Duration> {
        (wall - self.now()).to_std().ok().filter(|left| !left.is_zero())
    }
}

/// Fires every scheduled route of `registry` at each of its fire times after
/// the clock's reading at the start, through `fire`, until `stop` is
/// cancelled; returns at once if no route is scheduled. A route whose kill
/// switch is off is not fired, and says so at each of its times. `fire`
/// answers what it fired (a task or message id) or why it could not; fires
/// still running when `stop` is cancelled are waited for (the caller bounds
/// how long).
pub(crate) async fn run<F, Fut>(
    registry: Arc<Registry>,
    kill_switches: KillSwitches,
    clock: WallClock,
    fire: F,
    stop: CancellationToken,
) where
    F: Fn(&Route, DateTime<Tz>) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let routes = scheduled(&registry, &kill_switches);
    if routes.is_empty() {
        tracing::info!("cron: no scheduled route to fire");
        return;
    }
    let start = clock.now();
    tracing::info!("cron: firing {}", summary(&routes, start));
    join_all(routes.iter().map(|route| route.keep(start, clock, &fire, &stop))).await;
}

/// A scheduled route, with the variable that turns it off if its kill switch
/// is off (read once: a process's environment does not change).
struct Scheduled<'r> {
    route: &'r Route,
    off: Option<&'r str>,
}

/// The scheduled routes of `registry`, in declaration order.
fn scheduled<'r>(registry: &'r Registry, kill_switches: &KillSwitches) -> Vec<Scheduled<'r>> {
    let routes = registry.routes().filter(|route| route.is_scheduled());
    routes.map(|route| Scheduled { route, off: kill_switches.disabled_by(route) }).collect()
}

/// The startup line's list: each route, its schedule and next fire time, and its kill switch if off.
fn summary(routes: &[Scheduled<'_>], start: DateTime<Utc>) -> String {
    routes.iter().map(|route| route.describe(start)).collect::<Vec<_>>().join("; ")
}

impl Scheduled<'_> {
    /// Fires the route at each of its times after `start`. A fire does not
    /// wait for the one before it to end, as Cloud Scheduler does not, so a
    /// slow fire delays no other.
    async fn keep<F, Fut>(&self, start: DateTime<Utc>, clock: WallClock, fire: &F, stop: &CancellationToken)
    where
        F: Fn(&Route, DateTime<Tz>) -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        let mut times = self.route.fire_times_after(start).peekable();
        let mut in_flight = FuturesUnordered::new();
        loop {
            self.skip_missed(&mut times, clock.now());
            let Some(&time) = times.peek() else { break };
            if clock.has_reached(time.to_utc()) {
                times.next();
                in_flight.push(self.fire_at(time, fire));
                continue;
            }
            tokio::select! {
                () = clock.sleep_until(time.to_utc()) => {}
                Some(()) = in_flight.next() => {}
                () = stop.cancelled() => break,
            }
        }
        while in_flight.next().await.is_some() {}
    }

    /// Drops the times more than [`MISSED_AFTER`] before `now` from the front
    /// of `times`, with one log line for the lot.
    fn skip_missed(&self, times: &mut Peekable<impl Iterator<Item = DateTime<Tz>>>, now: DateTime<Utc>) {
        let missed = |time: &DateTime<Tz>| now - time.to_utc() > MISSED_AFTER;
        let Some(first) = times.next_if(missed) else { return };
        let rest = iter::from_fn(|| times.next_if(missed));
        let (count, last) = rest.fold((1, first), |(count, _), time| (count + 1, time));
        let name = self.route.name();
        tracing::info!("cron: {name} skipped {count} fire time(s) from {first} to {last}: long past on waking");
    }

    /// One fire at `time`: carried out through `fire` unless the kill switch
    /// is off, and logged either way.
    async fn fire_at<F, Fut>(&self, time: DateTime<Tz>, fire: &F)
    where
        F: Fn(&Route, DateTime<Tz>) -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        let name = self.route.name();
        if let Some(variable) = self.off {
            tracing::info!("cron: {name} not fired at {time}: {variable} is off");
            return;
        }
        match fire(self.route, time).await {
            Ok(fired) => tracing::info!("cron: {name} fired at {time}: {fired}"),
            Err(reason) => tracing::warn!("cron: {name} not fired at {time}: {reason}"),
        }
    }

    /// `name (schedule) next at time`, and the kill switch if it is off.
    fn describe(&self, start: DateTime<Utc>) -> String {
        let schedule = self.route.schedule().map(Schedule::expression).unwrap_or_default();
        let next = self.route.fire_times_after(start).next();
        let next = next.map_or_else(|| "never".to_owned(), |time| time.to_string());
        let off = self.off.map(|variable| format!(", not fired: {variable} is off")).unwrap_or_default();
        format!("{} ({schedule}) next at {next}{off}", self.route.name())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use chrono::TimeZone;
    use tokio::sync::mpsc::{self, UnboundedReceiver};
    use tokio::task::JoinHandle;
    use tracing::subscriber::DefaultGuard;
    use whirligig_registry::{RegistryBuilder, TaskContext, TaskRoute};

    use super::*;

    /// One fire as the test's closure saw it: the route, the time it was
    /// fired for, and the clock's reading when the closure was called.
    #[derive(Debug)]
    struct Fired {
        route: String,
        time: DateTime<Tz>,
        called: DateTime<Utc>,
    }

    /// What the test's closure does for a route: waits this long, then answers.
    type Answer = fn(&str) -> (Duration, Result<String, String>);

    fn published(_: &str) -> (Duration, Result<String, String>) {
        (Duration::ZERO, Ok("message 1".to_owned()))
    }

    fn utc(hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 7, 1, hour, minute, second).unwrap()
    }

    fn route(name: &str, schedule: &str) -> TaskRoute {
        TaskRoute::new(name, |_: TaskContext| async {}).schedule(schedule)
    }

    fn registry(routes: impl IntoIterator<Item = TaskRoute>) -> Arc<Registry> {
        Arc::new(routes.into_iter().fold(Registry::builder(), RegistryBuilder::route).build().unwrap())
    }

    fn times(fires: &[Fired]) -> Vec<DateTime<Utc>> {
        fires.iter().map(|fired| fired.time.to_utc()).collect()
    }

    fn on_time(fires: &[Fired]) -> bool {
        fires.iter().all(|fired| fired.called == fired.time.to_utc())
    }

    /// `run` spawned with a closure that reports each call on `fires`.
    struct Running {
        fires: UnboundedReceiver<Fired>,
        stop: CancellationToken,
        handle: JoinHandle<()>,
    }

    fn start(registry: Arc<Registry>, switches: KillSwitches, clock: WallClock, answer: Answer) -> Running {
        let (sender, fires) = mpsc::unbounded_channel();
        let fire = move |route: &Route, time: DateTime<Tz>| {
            let _ = sender.send(Fired { route: route.name().to_owned(), time, called: clock.now() });
            let (delay, outcome) = answer(route.name());
            async move {
                tokio::time::sleep(delay).await;
                outcome
            }
        };
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(registry, switches, clock, fire, stop.clone()));
        Running { fires, stop, handle }
    }

    impl Running {
        async fn take(&mut self, count: usize) -> Vec<Fired> {
            self.until(|fires| fires.len() == count).await
        }

        async fn until(&mut self, done: impl Fn(&[Fired]) -> bool) -> Vec<Fired> {
            let mut fires = Vec::new();
            while !done(&fires) {
                fires.push(self.fires.recv().await.unwrap());
            }
            fires
        }

        /// Cancels `stop` and checks that `run` returns once the fires in
        /// flight have ended (the slowest here takes 90 s), starting none.
        async fn stop(self) -> UnboundedReceiver<Fired> {
            self.stop_waiting().await.0
        }

        /// [`stop`](Self::stop), and how long `run` took to return.
        async fn stop_waiting(self) -> (UnboundedReceiver<Fired>, Duration) {
            let stopped = Instant::now();
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(91), self.handle).await.expect("run returns").unwrap();
            let waited = Instant::now() - stopped;
            assert!(waited <= Duration::from_secs(90), "run waited for more than its fires");
            (self.fires, waited)
        }
    }

    /// Log lines written while the guard lives (on this thread, which runs
    /// every task of a current-thread test runtime).
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn capture() -> (Self, DefaultGuard) {
            let lines = Self::default();
            let writer = lines.clone();
            let subscriber =
                tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).without_time().finish();
            (lines, tracing::subscriber::set_default(subscriber))
        }

        /// The line that contains `text`.
        fn find(&self, text: &str) -> String {
            let all = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            all.lines().find(|line| line.contains(text)).unwrap_or_else(|| panic!("no {text:?} in:\n{all}")).to_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_minutely_route_fires_at_each_minute_after_the_start() {
        let real = std::time::Instant::now();
        let (lines, _guard) = Lines::capture();
        let clock = WallClock::starting_at(utc(12, 0, 30));
        let mut running =
            start(registry([route("heartbeat", "*/1 * * * *")]), KillSwitches::default(), clock, published);
        let fires = running.take(3).await;
        assert_eq!(times(&fires), [utc(12, 1, 0), utc(12, 2, 0), utc(12, 3, 0)]);
        assert!(on_time(&fires), "{fires:?}");
        running.stop().await;
        assert!(real.elapsed() < Duration::from_millis(500), "three minutes took {:?}", real.elapsed());
        lines.find(
            "INFO whirligig_handler::dev::cron: cron: firing heartbeat (*/1 * * * *) next at 2024-07-01 12:01:00 UTC",
        );
        lines.find("INFO whirligig_handler::dev::cron: cron: heartbeat fired at 2024-07-01 12:02:00 UTC: message 1");
    }

    #[tokio::test(start_paused = true)]
    async fn routes_fire_independently_each_in_its_zone_however_slow_a_fire() {
        let registry =
            registry([route("minutely", "*/1 * * * *"), route("hourly", "0 * * * *").timezone("Europe/London")]);
        let slow_minutely: Answer =
            |name| (if name == "minutely" { Duration::from_secs(90) } else { Duration::ZERO }, Ok("sent".to_owned()));
        let clock = WallClock::starting_at(utc(11, 59, 30));
        let mut running = start(registry, KillSwitches::default(), clock, slow_minutely);
        let fires = running.until(|fires| fires.iter().filter(|fired| fired.route == "hourly").count() == 2).await;
        let stopped_at = clock.now();
        let (mut rest, waited) = running.stop_waiting().await;
        assert!(waited > Duration::ZERO, "the minutely fires in flight at the stop were waited for");
        while let Ok(fired) = rest.try_recv() {
            assert!(fired.called <= stopped_at, "a fire started after the stop: {fired:?}");
        }
        let (hourly, minutely): (Vec<_>, Vec<_>) = fires.into_iter().partition(|fired| fired.route == "hourly");
        let hourly_local: Vec<_> = hourly.iter().map(|fired| fired.time.to_string()).collect();
        assert_eq!(hourly_local, ["2024-07-01 13:00:00 BST", "2024-07-01 14:00:00 BST"]);
        assert_eq!(times(&hourly), [utc(12, 0, 0), utc(13, 0, 0)]);
        let every_minute: Vec<_> = (0..60).map(|minute| utc(12, minute, 0)).collect();
        assert_eq!(times(&minutely)[..60], every_minute, "each minute, though each fire takes 90 s");
        assert!(on_time(&hourly) && on_time(&minutely), "{hourly:?} {minutely:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_whose_kill_switch_is_off_is_not_fired() {
        let (lines, _guard) = Lines::capture();
        let off = route("heartbeat", "*/1 * * * *").kill_switch("ENABLE_HEARTBEAT");
        let registry = registry([off, route("cleanup", "*/1 * * * *")]);
        let switches = KillSwitches::from_lookup(&registry, &|name| (name == "ENABLE_HEARTBEAT").then(|| "off".into()));
        let mut running = start(registry, switches, WallClock::starting_at(utc(12, 0, 30)), published);
        let fires = running.take(3).await;
        assert_eq!(times(&fires), [utc(12, 1, 0), utc(12, 2, 0), utc(12, 3, 0)]);
        assert!(fires.iter().all(|fired| fired.route == "cleanup"), "{fires:?}");
        assert!(running.stop().await.try_recv().is_err(), "nothing else was fired");
        lines.find("heartbeat (*/1 * * * *) next at 2024-07-01 12:01:00 UTC, not fired: ENABLE_HEARTBEAT is off;");
        let line = lines.find("cron: heartbeat not fired at 2024-07-01 12:01:00 UTC: ENABLE_HEARTBEAT is off");
        assert!(line.contains("INFO"), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_scheduled_route_run_returns_at_once() {
        let registry = registry([TaskRoute::new("send_email", |_: TaskContext| async {})]);
        let fire = |_: &Route, _: DateTime<Tz>| async { Err::<String, _>("not called".to_owned()) };
        let started = Instant::now();
        let running = run(registry, KillSwitches::default(), WallClock::system(), fire, CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(1), running).await.expect("returns without being stopped");
        assert_eq!(Instant::now(), started);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fire_is_logged_and_the_next_still_happens() {
        let (lines, _guard) = Lines::capture();
        let refused: Answer = |_| (Duration::ZERO, Err("the emulator is not running".to_owned()));
        let clock = WallClock::starting_at(utc(12, 0, 30));
        let mut running = start(registry([route("heartbeat", "*/1 * * * *")]), KillSwitches::default(), clock, refused);
        assert_eq!(times(&running.take(2).await), [utc(12, 1, 0), utc(12, 2, 0)]);
        running.stop().await;
        let line = lines.find("cron: heartbeat not fired at 2024-07-01 12:01:00 UTC: the emulator is not running");
        assert!(line.contains("WARN"), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn times_long_past_on_waking_are_skipped_not_fired_in_a_burst() {
        let (lines, _guard) = Lines::capture();
        let clock = WallClock::starting_at(utc(12, 0, 30));
        let mut running =
            start(registry([route("heartbeat", "*/1 * * * *")]), KillSwitches::default(), clock, published);
        assert_eq!(times(&running.take(1).await), [utc(12, 1, 0)]);
        // The machine sleeps from 12:01:00 to 13:00:30: the pending sleep ends an hour late.
        tokio::time::advance(Duration::from_secs(59 * 60 + 30)).await;
        let fires = running.take(2).await;
        assert_eq!(times(&fires), [utc(13, 0, 0), utc(13, 1, 0)]);
        assert_eq!(fires[0].called, utc(13, 0, 30), "half a minute late is still fired");
        running.stop().await;
        lines.find("cron: heartbeat skipped 58 fire time(s) from 2024-07-01 12:02:00 UTC to 2024-07-01 12:59:00 UTC");
    }
}
