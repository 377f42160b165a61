//! OTP supervision conformance tests for `ractor-supervisor` 0.2.0 on `ractor` 0.16.5
//! (built with `default-features = false`, i.e. WITHOUT ractor's `async-trait` feature).
//!
//! Every test asserts the behaviour OTP's `supervisor` prescribes. Where the crate deviates, the
//! test fails and its message lists each deviation (collected by `Checks`) together with the full
//! event log, so a failing run is the evidence. Nothing here is weakened to make a test pass.
//!
//! Test children write their lifecycle into a shared log:
//! * `start:X` — `pre_start` ran
//! * `stop:X`  — `post_stop` ran (graceful stop; ractor skips it for a `kill` and for a failure)
//! * `fail:X`  — X is about to panic / return `Err` from `handle` (injected failure)
//! * `exit:X`  — X is about to stop itself normally (`myself.stop(None)`)
//! * `drop:X`  — X's state was dropped, i.e. the actor is really gone (also after a `kill`, which
//!   skips `post_stop`). Drop timing races with other events, so exact-order assertions ignore it.
//!
//! Actor names are global in ractor's registry, so every test uses its own name prefix.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/eval-target cargo test -j1 -- --test-threads=1`

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_supervisor::{
    ChildBackoffFn, ChildSpec, DynamicSupervisor, DynamicSupervisorMsg, DynamicSupervisorOptions,
    DynamicSupervisorState, Restart, SpawnFn, Supervisor, SupervisorArguments, SupervisorError,
    SupervisorMsg, SupervisorOptions, SupervisorState, SupervisorStrategy,
};

// ------------------------------------------------------------------------------------------------
// Shared log
// ------------------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<String>>>;

fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn push(log: &Log, entry: String) {
    log.lock().unwrap().push(entry);
}

fn snapshot(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// start/stop/fail/exit events only (drops and parent events removed), in order.
fn lifecycle(log: &Log) -> Vec<String> {
    snapshot(log)
        .into_iter()
        .filter(|e| {
            e.starts_with("start:")
                || e.starts_with("stop:")
                || e.starts_with("fail:")
                || e.starts_with("exit:")
        })
        .collect()
}

fn count(log: &Log, event: &str) -> usize {
    snapshot(log).iter().filter(|e| e.as_str() == event).count()
}

fn has_prefix(log: &Log, prefix: &str) -> bool {
    snapshot(log).iter().any(|e| e.starts_with(prefix))
}

/// Lifecycle events that happened after the (last) occurrence of `marker`.
fn lifecycle_after(log: &Log, marker: &str) -> Vec<String> {
    let ev = lifecycle(log);
    match ev.iter().rposition(|e| e == marker) {
        Some(i) => ev[i + 1..].to_vec(),
        None => panic!("marker {marker} not in log {ev:?}"),
    }
}

fn with_prefix(events: &[String], prefix: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.starts_with(prefix))
        .cloned()
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

async fn wait_until(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Time given to the system after the expected events appeared, so that any *extra* (wrong)
/// restart or stop has a chance to show up before we assert on exact sequences.
const SETTLE: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(3);

/// Collects deviations from OTP so that one test can report all of them at once.
struct Checks {
    scenario: &'static str,
    failures: Vec<String>,
}

impl Checks {
    fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            failures: Vec::new(),
        }
    }
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, observed: T, otp: T, what: &str) {
        if observed != otp {
            self.failures
                .push(format!("{what}\n      observed: {observed:?}\n      OTP:      {otp:?}"));
        }
    }
    fn finish(self, log: &Log) {
        assert!(
            self.failures.is_empty(),
            "[{}] {} OTP deviation(s):\n  - {}\nfull event log: {:?}",
            self.scenario,
            self.failures.len(),
            self.failures.join("\n  - "),
            snapshot(log)
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Test child actor
// ------------------------------------------------------------------------------------------------

enum ChildMsg {
    /// log `fail:X`, then panic inside `handle`
    Panic,
    /// log `fail:X`, then return `Err` from `handle`
    Error,
    /// log `exit:X`, then `myself.stop(None)` (normal exit)
    ExitNormal,
    /// block inside `handle` for an hour: the actor can no longer process a graceful stop
    Hang,
    Ping(RpcReplyPort<()>),
}

struct TestChild {
    log: Log,
}

struct ChildState {
    name: String,
    log: Log,
}

impl Drop for ChildState {
    fn drop(&mut self) {
        push(&self.log, format!("drop:{}", self.name));
    }
}

impl Actor for TestChild {
    type Msg = ChildMsg;
    type State = ChildState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ChildMsg>,
        _args: (),
    ) -> Result<ChildState, ActorProcessingErr> {
        let name = myself.get_name().unwrap_or_default();
        push(&self.log, format!("start:{name}"));
        Ok(ChildState {
            name,
            log: self.log.clone(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ChildMsg>,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        push(&self.log, format!("stop:{}", state.name));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ChildMsg>,
        msg: ChildMsg,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChildMsg::Panic => {
                push(&self.log, format!("fail:{}", state.name));
                panic!("injected panic in {}", state.name);
            }
            ChildMsg::Error => {
                push(&self.log, format!("fail:{}", state.name));
                return Err(format!("injected error in {}", state.name).into());
            }
            ChildMsg::ExitNormal => {
                push(&self.log, format!("exit:{}", state.name));
                myself.stop(None);
            }
            ChildMsg::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            ChildMsg::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

fn child(name: &str) -> Option<ActorRef<ChildMsg>> {
    ActorRef::<ChildMsg>::where_is(name)
}

fn send(name: &str, msg: ChildMsg) {
    child(name)
        .unwrap_or_else(|| panic!("child {name} is not registered"))
        .send_message(msg)
        .unwrap_or_else(|_| panic!("cannot send to {name}"));
}

/// true if `name` is registered and answers a ping within 500 ms
async fn alive(name: &str) -> bool {
    match child(name) {
        Some(r) => ractor::call_t!(r, ChildMsg::Ping, 500).is_ok(),
        None => false,
    }
}

fn spec(id: &str, restart: Restart, log: &Log) -> ChildSpec {
    let log = log.clone();
    ChildSpec {
        id: id.to_string(),
        restart,
        spawn_fn: SpawnFn::new(move |sup_cell: ActorCell, id: String| {
            let log = log.clone();
            async move {
                let (r, _h) =
                    Supervisor::spawn_linked(id, TestChild { log }, (), sup_cell).await?;
                Ok(r.get_cell())
            }
        }),
        backoff_fn: None,
        reset_after: None,
    }
}

fn options(strategy: SupervisorStrategy, max_restarts: usize, window: Duration) -> SupervisorOptions {
    SupervisorOptions {
        strategy,
        max_restarts,
        max_window: window,
        reset_after: None,
    }
}

async fn start_sup(
    name: &str,
    options: SupervisorOptions,
    child_specs: Vec<ChildSpec>,
) -> (ActorRef<SupervisorMsg>, JoinHandle<()>) {
    Supervisor::spawn(
        name.to_string(),
        SupervisorArguments {
            child_specs,
            options,
        },
    )
    .await
    .expect("supervisor spawn")
}

async fn inspect(sup: &ActorRef<SupervisorMsg>) -> SupervisorState {
    ractor::call_t!(sup, SupervisorMsg::InspectState, 1000).expect("InspectState")
}

async fn inspect_dyn(sup: &ActorRef<DynamicSupervisorMsg>) -> DynamicSupervisorState {
    ractor::call_t!(sup, DynamicSupervisorMsg::InspectState, 1000).expect("InspectState")
}

async fn stop_sup<M: ractor::Message>(sup: ActorRef<M>, h: JoinHandle<()>) {
    sup.stop(None);
    let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Start a supervisor with children `{prefix}-A`, `-B`, ... and wait for all of them to start.
async fn start_abcd(
    prefix: &str,
    strategy: SupervisorStrategy,
    restarts: &[Restart],
    log: &Log,
) -> (ActorRef<SupervisorMsg>, JoinHandle<()>, Vec<String>) {
    let names: Vec<String> = ["A", "B", "C", "D"]
        .iter()
        .take(restarts.len())
        .map(|x| format!("{prefix}-{x}"))
        .collect();
    let specs = names
        .iter()
        .zip(restarts)
        .map(|(n, r)| spec(n, *r, log))
        .collect();
    let (sup, h) = start_sup(
        &format!("{prefix}-sup"),
        options(strategy, 10, Duration::from_secs(10)),
        specs,
    )
    .await;
    let n = names.len();
    assert!(
        wait_until(WAIT, || lifecycle(log).len() >= n).await,
        "children did not start: {:?}",
        snapshot(log)
    );
    let starts: Vec<String> = names.iter().map(|n| format!("start:{n}")).collect();
    assert_eq!(lifecycle(log), starts, "initial start order");
    (sup, h, names)
}

// ------------------------------------------------------------------------------------------------
// Parent actor used to observe escalation
// ------------------------------------------------------------------------------------------------

struct Parent {
    log: Log,
}

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        evt: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let meltdown = matches!(
                    err.downcast_ref::<SupervisorError>(),
                    Some(SupervisorError::Meltdown { .. })
                );
                push(
                    &self.log,
                    format!(
                        "parent:failed:{}:meltdown={meltdown}:{err}",
                        cell.get_name().unwrap_or_default()
                    ),
                );
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                push(
                    &self.log,
                    format!(
                        "parent:terminated:{}:{reason:?}",
                        cell.get_name().unwrap_or_default()
                    ),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

// ================================================================================================
// Scenario 1: one_for_one — failing child k restarts only k.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_one_for_one_restarts_only_failed_child() {
    let log = new_log();
    let mut c = Checks::new("s1 one_for_one");
    let (sup, h, names) = start_abcd(
        "s1",
        SupervisorStrategy::OneForOne,
        &[Restart::Permanent; 4],
        &log,
    )
    .await;

    // (a) C panics in handle -> only C is restarted.
    send("s1-C", ChildMsg::Panic);
    c.check(
        wait_until(WAIT, || count(&log, "start:s1-C") >= 2).await,
        "C was not restarted after a panic",
    );
    tokio::time::sleep(SETTLE).await;
    c.eq(
        lifecycle_after(&log, "fail:s1-C"),
        s(&["start:s1-C"]),
        "events after C panicked",
    );

    // (b) B returns Err from handle -> only B is restarted.
    send("s1-B", ChildMsg::Error);
    c.check(
        wait_until(WAIT, || count(&log, "start:s1-B") >= 2).await,
        "B was not restarted after an Err",
    );
    tokio::time::sleep(SETTLE).await;
    c.eq(
        lifecycle_after(&log, "fail:s1-B"),
        s(&["start:s1-B"]),
        "events after B returned Err",
    );
    for (n, expect) in names.iter().zip([1usize, 2, 2, 1]) {
        c.eq(
            count(&log, &format!("start:{n}")),
            expect,
            &format!("number of starts of {n}"),
        );
        c.check(alive(n).await, format!("{n} not alive at the end"));
    }

    // Per-child restart counters exposed by InspectState.
    let st = inspect(&sup).await;
    for (n, expect) in names.iter().zip([0usize, 1, 1, 0]) {
        let got = st.child_failure_state.get(n).map(|f| f.restart_count);
        c.eq(got, Some(expect), &format!("InspectState restart_count of {n}"));
    }
    c.eq(st.restart_log.len(), 2, "InspectState restart_log length");

    stop_sup(sup, h).await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 2: one_for_all — failing child k: the others are stopped in reverse start order,
// then all four are restarted in start order.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_one_for_all_stops_reverse_restarts_in_order() {
    let log = new_log();
    let mut c = Checks::new("s2 one_for_all");
    let (sup, h, names) = start_abcd(
        "s2",
        SupervisorStrategy::OneForAll,
        &[Restart::Permanent; 4],
        &log,
    )
    .await;

    send("s2-B", ChildMsg::Panic);
    c.check(
        wait_until(WAIT, || names.iter().all(|n| count(&log, &format!("start:{n}")) >= 2)).await,
        "not all four children were restarted",
    );
    tokio::time::sleep(SETTLE).await;

    let after = lifecycle_after(&log, "fail:s2-B");
    // OTP: terminate the surviving siblings (shutdown => terminate/post_stop runs) in reverse
    // start order, then start all children in start order.
    c.eq(
        after.clone(),
        s(&[
            "stop:s2-D", "stop:s2-C", "stop:s2-A", "start:s2-A", "start:s2-B", "start:s2-C",
            "start:s2-D",
        ]),
        "full sequence after B failed",
    );
    c.eq(
        with_prefix(&after, "stop:"),
        s(&["stop:s2-D", "stop:s2-C", "stop:s2-A"]),
        "graceful stops of the siblings (reverse start order)",
    );
    c.eq(
        with_prefix(&after, "start:"),
        s(&["start:s2-A", "start:s2-B", "start:s2-C", "start:s2-D"]),
        "restart order",
    );
    let drops: Vec<String> = with_prefix(&snapshot(&log), "drop:");
    println!("s2 observed termination (drop) order: {drops:?}");
    for n in &names {
        c.eq(count(&log, &format!("start:{n}")), 2, &format!("starts of {n}"));
        c.check(alive(n).await, format!("{n} not alive at the end"));
    }
    stop_sup(sup, h).await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 3: rest_for_one — failing 2nd child B: C and D stopped in reverse order (D, C), then
// B, C, D restarted in start order; A untouched.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_rest_for_one_stops_later_reverse_restarts_in_order() {
    let log = new_log();
    let mut c = Checks::new("s3 rest_for_one");
    let (sup, h, names) = start_abcd(
        "s3",
        SupervisorStrategy::RestForOne,
        &[Restart::Permanent; 4],
        &log,
    )
    .await;

    send("s3-B", ChildMsg::Panic);
    c.check(
        wait_until(WAIT, || {
            ["s3-B", "s3-C", "s3-D"]
                .iter()
                .all(|n| count(&log, &format!("start:{n}")) >= 2)
        })
        .await,
        "B, C, D were not all restarted",
    );
    tokio::time::sleep(SETTLE).await;

    let after = lifecycle_after(&log, "fail:s3-B");
    c.eq(
        after.clone(),
        s(&["stop:s3-D", "stop:s3-C", "start:s3-B", "start:s3-C", "start:s3-D"]),
        "full sequence after B failed",
    );
    c.eq(
        with_prefix(&after, "stop:"),
        s(&["stop:s3-D", "stop:s3-C"]),
        "graceful stops of the later children (reverse start order)",
    );
    c.eq(
        with_prefix(&after, "start:"),
        s(&["start:s3-B", "start:s3-C", "start:s3-D"]),
        "restart order",
    );
    c.eq(count(&log, "start:s3-A"), 1, "A must not be restarted");
    c.check(!has_prefix(&log, "drop:s3-A"), "A must not be terminated");
    println!(
        "s3 observed termination (drop) order: {:?}",
        with_prefix(&snapshot(&log), "drop:")
    );
    for n in &names {
        c.check(alive(n).await, format!("{n} not alive at the end"));
    }
    stop_sup(sup, h).await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 4: transient — a normal exit is NOT restarted, a failure IS.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_transient_restarted_on_failure_only() {
    let log = new_log();
    let mut c = Checks::new("s4 transient");
    let (sup, h, _names) = start_abcd(
        "s4",
        SupervisorStrategy::OneForOne,
        &[Restart::Transient, Restart::Permanent],
        &log,
    )
    .await;

    // failure -> restarted
    send("s4-A", ChildMsg::Error);
    c.check(
        wait_until(WAIT, || count(&log, "start:s4-A") >= 2).await,
        "transient child was not restarted after a failure",
    );
    tokio::time::sleep(SETTLE).await;

    // normal exit -> not restarted
    send("s4-A", ChildMsg::ExitNormal);
    wait_until(WAIT, || count(&log, "stop:s4-A") >= 1).await;
    tokio::time::sleep(SETTLE).await;
    c.eq(
        lifecycle(&log),
        s(&[
            "start:s4-A", "start:s4-B", "fail:s4-A", "start:s4-A", "exit:s4-A", "stop:s4-A",
        ]),
        "transient lifecycle",
    );
    c.check(child("s4-A").is_none(), "transient child is registered again after a normal exit");
    c.check(alive("s4-B").await, "sibling B not alive");
    stop_sup(sup, h).await;
    c.finish(&log);
}

// ------------------------------------------------------------------------------------------------
// Extra for scenario 4: a transient child killed from outside. In OTP the exit reason `killed` is
// abnormal, so a transient child is restarted. ractor reports a kill as ActorTerminated with reason
// "killed", and ractor-supervisor treats every ActorTerminated as a normal exit.
// ------------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4b_transient_killed_externally_is_restarted() {
    let log = new_log();
    let mut c = Checks::new("s4b transient killed");
    let (sup, h, _names) = start_abcd(
        "s4b",
        SupervisorStrategy::OneForOne,
        &[Restart::Transient],
        &log,
    )
    .await;
    child("s4b-A").expect("A registered").get_cell().kill();
    let restarted = wait_until(Duration::from_secs(1), || count(&log, "start:s4b-A") >= 2).await;
    c.check(restarted, "transient child killed from outside (reason `killed`) was not restarted");
    stop_sup(sup, h).await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 5: temporary — never restarted: not on its own failure, and not when a sibling's failure
// takes it down under one_for_all / rest_for_one.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_temporary_never_restarted() {
    // one log per sub-case (each sub-case asserts its own initial start order)
    let (la, lb, lc) = (new_log(), new_log(), new_log());
    let mut c = Checks::new("s5 temporary");

    // (a) its own failure, under one_for_all: not restarted, siblings untouched.
    let (sup, h, _) = start_abcd(
        "s5a",
        SupervisorStrategy::OneForAll,
        &[Restart::Permanent, Restart::Temporary, Restart::Permanent],
        &la,
    )
    .await;
    send("s5a-B", ChildMsg::Panic);
    tokio::time::sleep(SETTLE * 2).await;
    c.eq(
        lifecycle_after(&la, "fail:s5a-B"),
        vec![],
        "(a) events after the temporary child failed",
    );
    c.check(child("s5a-B").is_none(), "(a) temporary child came back");
    stop_sup(sup, h).await;

    // (b) one_for_all: sibling A fails; temporary B is taken down and must NOT be restarted.
    let (sup, h, _) = start_abcd(
        "s5b",
        SupervisorStrategy::OneForAll,
        &[Restart::Permanent, Restart::Temporary, Restart::Permanent],
        &lb,
    )
    .await;
    send("s5b-A", ChildMsg::Panic);
    wait_until(WAIT, || count(&lb, "start:s5b-C") >= 2).await;
    tokio::time::sleep(SETTLE).await;
    c.eq(
        count(&lb, "start:s5b-B"),
        1,
        "(b) one_for_all: starts of the temporary child",
    );
    c.check(
        !alive("s5b-B").await,
        "(b) one_for_all: temporary child is running again after a sibling's failure",
    );
    c.check(alive("s5b-A").await && alive("s5b-C").await, "(b) permanent siblings not alive");
    stop_sup(sup, h).await;

    // (c) rest_for_one: B fails; temporary C (after B) is taken down and must NOT be restarted.
    let (sup, h, _) = start_abcd(
        "s5c",
        SupervisorStrategy::RestForOne,
        &[
            Restart::Permanent,
            Restart::Permanent,
            Restart::Temporary,
            Restart::Permanent,
        ],
        &lc,
    )
    .await;
    send("s5c-B", ChildMsg::Panic);
    wait_until(WAIT, || count(&lc, "start:s5c-D") >= 2).await;
    tokio::time::sleep(SETTLE).await;
    c.eq(
        count(&lc, "start:s5c-C"),
        1,
        "(c) rest_for_one: starts of the temporary child",
    );
    c.check(
        !alive("s5c-C").await,
        "(c) rest_for_one: temporary child is running again after an earlier sibling's failure",
    );
    stop_sup(sup, h).await;
    let all = new_log();
    for l in [&la, &lb, &lc] {
        all.lock().unwrap().extend(snapshot(l));
    }
    c.finish(&all);
}

// ================================================================================================
// Scenario 6: intensity — more than max_restarts within max_window: supervisor gives up, children
// are terminated and the supervisor fails towards its parent. Spread-out failures are fine.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_restart_intensity() {
    let log = new_log();
    let mut c = Checks::new("s6 intensity");

    // (a) max_restarts = 2 within 2 s; three quick failures must escalate.
    let (parent, parent_h) = Actor::spawn(Some("s6a-parent".into()), Parent { log: log.clone() }, ())
        .await
        .unwrap();
    let (sup, sup_h) = Supervisor::spawn_linked(
        "s6a-sup".into(),
        Supervisor,
        SupervisorArguments {
            child_specs: vec![
                spec("s6a-A", Restart::Permanent, &log),
                spec("s6a-B", Restart::Permanent, &log),
            ],
            options: options(SupervisorStrategy::OneForOne, 2, Duration::from_secs(2)),
        },
        parent.get_cell(),
    )
    .await
    .unwrap();
    assert!(wait_until(WAIT, || count(&log, "start:s6a-B") == 1).await);

    for i in 1..=2 {
        send("s6a-A", ChildMsg::Panic);
        c.check(
            wait_until(WAIT, || count(&log, "start:s6a-A") > i).await,
            format!("(a) restart #{i} did not happen"),
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.check(
        !has_prefix(&log, "parent:"),
        "(a) supervisor gave up after exactly max_restarts restarts (OTP: only MORE than MaxR)",
    );
    c.check(alive("s6a-B").await, "(a) B should still be alive after 2 restarts of A");

    let t = Instant::now();
    send("s6a-A", ChildMsg::Panic); // 3rd failure = max_restarts + 1
    let escalated = wait_until(WAIT, || has_prefix(&log, "parent:")).await;
    c.check(escalated, "(a) parent saw no exit of the supervisor after max_restarts+1 failures");
    if escalated {
        println!("s6 escalation observed after {:?}", t.elapsed());
    }
    c.check(
        has_prefix(&log, "parent:failed:s6a-sup:meltdown=true"),
        "(a) supervisor should exit abnormally with a Meltdown error visible to the parent",
    );
    c.check(
        tokio::time::timeout(Duration::from_secs(2), sup_h).await.is_ok(),
        "(a) supervisor task did not finish",
    );
    c.eq(count(&log, "start:s6a-A"), 3, "(a) starts of A (1 + 2 restarts, no 3rd)");
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.check(
        child("s6a-A").is_none() && child("s6a-B").is_none(),
        "(a) children still registered after the supervisor gave up",
    );
    println!(
        "s6 (a) child stop/drop events after giving up: {:?}",
        snapshot(&log)
            .into_iter()
            .filter(|e| e.starts_with("stop:s6a") || e.starts_with("drop:s6a-B"))
            .collect::<Vec<_>>()
    );
    drop(sup);
    parent.stop(None);
    let _ = parent_h.await;

    // (b) max_restarts = 2 within 300 ms; 5 failures 500 ms apart must NOT escalate.
    let (parent, parent_h) = Actor::spawn(Some("s6b-parent".into()), Parent { log: log.clone() }, ())
        .await
        .unwrap();
    let (sup, sup_h) = Supervisor::spawn_linked(
        "s6b-sup".into(),
        Supervisor,
        SupervisorArguments {
            child_specs: vec![spec("s6b-A", Restart::Permanent, &log)],
            options: options(SupervisorStrategy::OneForOne, 2, Duration::from_millis(300)),
        },
        parent.get_cell(),
    )
    .await
    .unwrap();
    assert!(wait_until(WAIT, || count(&log, "start:s6b-A") == 1).await);
    for i in 1..=5 {
        send("s6b-A", ChildMsg::Panic);
        c.check(
            wait_until(WAIT, || count(&log, "start:s6b-A") > i).await,
            format!("(b) spread restart #{i} did not happen"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.check(
        !has_prefix(&log, "parent:failed:s6b") && !has_prefix(&log, "parent:terminated:s6b"),
        "(b) supervisor gave up although failures were spread beyond the window",
    );
    c.check(alive("s6b-A").await, "(b) child not alive");
    stop_sup(sup, sup_h).await;
    parent.stop(None);
    let _ = parent_h.await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 7: backoff — restart delays grow and cap. The crate has no built-in backoff policy; it
// exposes a per-child `backoff_fn(child_id, restart_count, last_fail, reset_after) -> Option<delay>`.
// We give it a capped exponential and check the crate feeds it a growing restart_count, honours the
// returned delay (loosely: observed gap >= 0.9 * delay) and that per-child reset_after resets it.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_backoff_grows_and_caps() {
    let log = new_log();
    let mut c = Checks::new("s7 backoff");
    let seen: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    fn delay_for(n: usize) -> Duration {
        // 50, 100, 200, 400, 400, 400 ms
        Duration::from_millis((50u64 << (n.saturating_sub(1)).min(10)).min(400))
    }
    let seen2 = seen.clone();
    let mut a = spec("s7-A", Restart::Permanent, &log);
    a.backoff_fn = Some(ChildBackoffFn::new(move |_id, restart_count, _last, _reset| {
        seen2.lock().unwrap().push(restart_count);
        Some(delay_for(restart_count))
    }));
    a.reset_after = Some(Duration::from_millis(1000));
    let (sup, h) = start_sup(
        "s7-sup",
        options(SupervisorStrategy::OneForOne, 100, Duration::from_secs(60)),
        vec![a],
    )
    .await;
    assert!(wait_until(WAIT, || count(&log, "start:s7-A") == 1).await);

    let mut gaps = Vec::new();
    for i in 1..=6usize {
        let t0 = Instant::now();
        send("s7-A", ChildMsg::Panic);
        let ok = wait_until(Duration::from_secs(5), || count(&log, "start:s7-A") > i).await;
        c.check(ok, format!("restart #{i} did not happen"));
        gaps.push(t0.elapsed());
    }
    println!("s7 observed failure->restart gaps: {gaps:?}");
    c.eq(seen.lock().unwrap().clone(), vec![1, 2, 3, 4, 5, 6], "restart_count passed to backoff_fn");
    for (i, g) in gaps.iter().enumerate() {
        let want = delay_for(i + 1);
        c.check(
            *g >= want.mul_f64(0.9),
            format!("restart #{} came after {g:?}, before its backoff delay {want:?}", i + 1),
        );
    }
    // Growth and cap (loose): 3rd gap clearly longer than the 1st; the 6th gap far below the
    // uncapped 1600 ms.
    c.check(gaps[2] > gaps[0], format!("no growth: {gaps:?}"));
    c.check(gaps[5] < Duration::from_millis(1200), format!("no cap: {gaps:?}"));

    // Per-child reset_after: quiet for longer than 1 s -> restart_count starts again at 1.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send("s7-A", ChildMsg::Panic);
    c.check(
        wait_until(Duration::from_secs(5), || count(&log, "start:s7-A") > 7).await,
        "restart after reset did not happen",
    );
    c.eq(seen.lock().unwrap().last().copied(), Some(1), "restart_count after reset_after");
    stop_sup(sup, h).await;
    c.finish(&log);
}

// ================================================================================================
// Scenario 8: shutdown — stopping the supervisor stops the children gracefully in reverse start
// order; a child that does not stop within its shutdown timeout is killed.
//
// NOT EXPRESSIBLE part: ChildSpec has no `shutdown` field (no per-child timeout / brutal_kill /
// infinity), so the timeout itself cannot be configured; we only check the observable order and
// that the stuck child is eventually gone.
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_shutdown_reverse_order_graceful() {
    let log = new_log();
    let mut c = Checks::new("s8 shutdown");
    let (sup, h, names) = start_abcd(
        "s8",
        SupervisorStrategy::OneForOne,
        &[Restart::Permanent; 4],
        &log,
    )
    .await;
    // D (started last, so stopped first under OTP) is stuck and will never process a stop.
    send("s8-D", ChildMsg::Hang);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mark = lifecycle(&log).len();

    let t = Instant::now();
    sup.stop(None);
    let finished = tokio::time::timeout(Duration::from_secs(10), h).await.is_ok();
    let took = t.elapsed();
    tokio::time::sleep(SETTLE).await;
    println!(
        "s8 supervisor stop took {took:?}; events after stop: {:?}",
        snapshot(&log)
    );
    c.check(finished, "supervisor did not terminate");
    let after: Vec<String> = lifecycle(&log)[mark..].to_vec();
    c.eq(
        with_prefix(&after, "stop:"),
        s(&["stop:s8-C", "stop:s8-B", "stop:s8-A"]),
        "graceful stops (post_stop) in reverse start order; D is stuck so it is killed",
    );
    c.eq(with_prefix(&after, "start:"), vec![], "no restarts during shutdown");
    for n in &names {
        c.check(child(n).is_none(), format!("{n} still registered after supervisor stop"));
        c.check(
            has_prefix(&log, &format!("drop:{n}")),
            format!("{n} was never terminated"),
        );
    }
    c.finish(&log);
}

// ================================================================================================
// Scenario 9: dynamic children — children added at run time are supervised.
// (DynamicSupervisor: one_for_one only; each child carries its own ChildSpec, like Elixir's
// DynamicSupervisor rather than simple_one_for_one's single shared template.)
// ================================================================================================
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_dynamic_children_are_supervised() {
    let log = new_log();
    let mut c = Checks::new("s9 dynamic");
    let (dsup, h) = DynamicSupervisor::spawn(
        "s9-dsup".into(),
        DynamicSupervisorOptions {
            max_children: Some(3),
            max_restarts: 10,
            max_window: Duration::from_secs(10),
            reset_after: None,
        },
    )
    .await
    .unwrap();

    let r1 = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9-W1", Restart::Permanent, &log)).await;
    let r2 = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9-W2", Restart::Transient, &log)).await;
    c.check(r1.is_ok() && r2.is_ok(), format!("spawn_child failed: {r1:?} {r2:?}"));
    c.check(alive("s9-W1").await && alive("s9-W2").await, "dynamic children not alive");

    // permanent dynamic child that fails is restarted
    send("s9-W1", ChildMsg::Panic);
    c.check(
        wait_until(WAIT, || count(&log, "start:s9-W1") >= 2).await,
        "dynamic child W1 not restarted after failure",
    );
    // transient dynamic child that exits normally is not restarted, and is forgotten
    send("s9-W2", ChildMsg::ExitNormal);
    tokio::time::sleep(SETTLE).await;
    c.eq(count(&log, "start:s9-W2"), 1, "starts of transient W2 after normal exit");
    c.check(alive("s9-W1").await, "W1 not alive after restart");

    // max_children = 3 is enforced (Elixir DynamicSupervisor semantics)
    let r3 = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9-W3", Restart::Permanent, &log)).await;
    let r4 = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9-W4", Restart::Permanent, &log)).await;
    let r5 = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9-W5", Restart::Permanent, &log)).await;
    c.check(r3.is_ok() && r4.is_ok(), format!("W3/W4 rejected: {r3:?} {r4:?}"));
    c.check(r5.is_err(), "4th concurrent child accepted despite max_children = 3");
    c.check(child("s9-W5").is_none(), "W5 running despite max_children");

    // a late-added child is supervised as well
    send("s9-W4", ChildMsg::Error);
    c.check(
        wait_until(WAIT, || count(&log, "start:s9-W4") >= 2).await,
        "late-added W4 not restarted",
    );
    tokio::time::sleep(SETTLE).await;
    let st = inspect_dyn(&dsup).await;
    let ids: BTreeSet<String> = st.active_children.keys().cloned().collect();
    c.eq(
        ids,
        ["s9-W1", "s9-W3", "s9-W4"].iter().map(|x| x.to_string()).collect(),
        "active children (introspection)",
    );
    c.eq(
        st.child_failure_state.get("s9-W4").map(|f| f.restart_count),
        Some(1),
        "restart_count of W4",
    );
    stop_sup(dsup, h).await;
    c.finish(&log);
}

// ------------------------------------------------------------------------------------------------
// Extra: DynamicSupervisor::terminate_child. OTP's terminate_child shuts the child down per its
// shutdown spec (graceful: terminate/2 / post_stop runs) and does not restart it.
// ------------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9b_dynamic_terminate_child_is_graceful() {
    let log = new_log();
    let mut c = Checks::new("s9b dynamic terminate_child");
    let (dsup, h) = DynamicSupervisor::spawn(
        "s9b-dsup".into(),
        DynamicSupervisorOptions {
            max_children: None,
            max_restarts: 10,
            max_window: Duration::from_secs(10),
            reset_after: None,
        },
    )
    .await
    .unwrap();
    DynamicSupervisor::spawn_child(dsup.clone(), spec("s9b-W", Restart::Permanent, &log))
        .await
        .unwrap();
    DynamicSupervisor::terminate_child(dsup.clone(), "s9b-W".into())
        .await
        .unwrap();
    tokio::time::sleep(SETTLE).await;
    c.eq(count(&log, "start:s9b-W"), 1, "terminated permanent child must not be restarted");
    c.check(child("s9b-W").is_none(), "terminated child still registered");
    c.eq(
        count(&log, "stop:s9b-W"),
        1,
        "terminate_child should stop the child gracefully (post_stop)",
    );
    stop_sup(dsup, h).await;
    c.finish(&log);
}

// ------------------------------------------------------------------------------------------------
// Extra: adding a dynamic child whose id is already running. OTP/Elixir: start_child returns an
// error ({already_started, Pid}) and the supervisor and its other children are unaffected.
// ------------------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9c_dynamic_duplicate_id_is_rejected_without_harm() {
    let log = new_log();
    let mut c = Checks::new("s9c dynamic duplicate id");
    let (parent, parent_h) = Actor::spawn(Some("s9c-parent".into()), Parent { log: log.clone() }, ())
        .await
        .unwrap();
    let (dsup, dsup_h) = DynamicSupervisor::spawn_linked(
        "s9c-dsup".into(),
        DynamicSupervisor,
        DynamicSupervisorOptions {
            max_children: None,
            max_restarts: 3,
            max_window: Duration::from_secs(10),
            reset_after: None,
        },
        parent.get_cell(),
    )
    .await
    .unwrap();
    DynamicSupervisor::spawn_child(dsup.clone(), spec("s9c-W", Restart::Permanent, &log))
        .await
        .unwrap();
    let dup = DynamicSupervisor::spawn_child(dsup.clone(), spec("s9c-W", Restart::Permanent, &log)).await;
    println!("s9c duplicate spawn_child returned: {dup:?}");
    c.check(dup.is_err(), "spawn_child with a duplicate id returned Ok");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.check(
        !has_prefix(&log, "parent:"),
        format!(
            "dynamic supervisor exited after a rejected duplicate start: {:?}",
            snapshot(&log).into_iter().filter(|e| e.starts_with("parent:")).collect::<Vec<_>>()
        ),
    );
    c.check(alive("s9c-W").await, "original child W no longer alive");
    dsup.stop(None);
    let _ = tokio::time::timeout(Duration::from_secs(5), dsup_h).await;
    parent.stop(None);
    let _ = parent_h.await;
    c.finish(&log);
}
