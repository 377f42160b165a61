//! Supervision conformance: the generic supervisor against OTP's documented semantics
//! (strategies, restart types, intensity and escalation, backoff, ordered shutdown,
//! dynamic children) and the directory it publishes.
//!
//! Children are small test actors that log `start:<id>` in `pre_start` and `stop:<id>` in
//! `post_stop` and can be told to fail, panic or exit normally. Asynchronous outcomes are
//! awaited by polling with a generous deadline; nothing asserts on elapsed time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::NodeContext;
use actors::directory::{ActorKind, ActorMeta, ChildView, SlotState};
use actors::events::{Event, Shared};
use actors::supervisor::{
    Backoff, ChildSpec, Escalation, Restart, Shutdown, Strategy, Supervisor, SupervisorArgs,
    SupervisorError, SupervisorMsg, SupervisorSpec,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, call_t};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// How long any asynchronous outcome may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);
/// Timeout of RPCs to the supervisor, in ms.
const CALL_MS: u64 = 5_000;

// ---------------------------------------------------------------------------------------
// Test child
// ---------------------------------------------------------------------------------------

/// What the test children share with the test: the start/stop log and a way to reach
/// each incarnation by pid.
#[derive(Default)]
struct Probe {
    log: Mutex<Vec<String>>,
    refs: Mutex<HashMap<u64, ActorRef<TestMsg>>>,
}

impl Probe {
    fn record(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The log from `mark` on.
    fn since(&self, mark: usize) -> Vec<String> {
        self.log.lock().unwrap()[mark..].to_vec()
    }

    fn count(&self, entry: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == entry)
            .count()
    }

    fn actor(&self, pid: u64) -> ActorRef<TestMsg> {
        self.refs
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| panic!("no test child with pid {pid}"))
    }
}

enum TestMsg {
    /// Return an error from `handle`.
    Fail,
    /// Panic inside `handle`.
    Panic,
    /// Stop normally (`myself.stop(None)`).
    Exit,
}
impl ractor::Message for TestMsg {}

#[derive(Clone)]
struct ChildArgs {
    id: String,
    probe: Arc<Probe>,
    ctx: Arc<NodeContext>,
    /// `post_stop` never returns (after logging `stop:<id>`).
    hang_on_stop: bool,
}

struct TestChild;

impl Actor for TestChild {
    type Msg = TestMsg;
    type State = ChildArgs;
    type Arguments = ChildArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ChildArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: args.id.clone(),
                kind: ActorKind::Service,
                role: None,
                domain: None,
            },
        );
        args.probe
            .refs
            .lock()
            .unwrap()
            .insert(myself.get_id().pid(), myself.clone());
        args.probe.record(format!("start:{}", args.id));
        Ok(args)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.probe.record(format!("stop:{}", state.id));
        state.ctx.directory.leave(myself.get_id().pid());
        if state.hang_on_stop {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TestMsg::Fail => Err(format!("{} failed on request", state.id).into()),
            TestMsg::Panic => panic!("{} panicked on request", state.id),
            TestMsg::Exit => {
                myself.stop(None);
                Ok(())
            }
        }
    }
}

fn test_child(id: &str, probe: &Arc<Probe>, ctx: &Arc<NodeContext>, hang: bool) -> ChildSpec {
    let args = ChildArgs {
        id: id.to_string(),
        probe: probe.clone(),
        ctx: ctx.clone(),
        hang_on_stop: hang,
    };
    ChildSpec::new(id, move |sup, _incarnation| {
        let args = args.clone();
        async move {
            Actor::spawn_linked(None, TestChild, args, sup)
                .await
                .map(|(r, _)| r.get_cell())
        }
    })
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Restarts quickly and predictably unless a test says otherwise.
fn quick_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(10),
        jitter: 0.0,
    }
}

struct Harness {
    ctx: Arc<NodeContext>,
    probe: Arc<Probe>,
    sup: ActorRef<SupervisorMsg>,
    handle: Option<JoinHandle<()>>,
    events: broadcast::Receiver<Shared>,
}

impl Harness {
    fn parts() -> (Arc<NodeContext>, Arc<Probe>) {
        (NodeContext::new("test"), Arc::new(Probe::default()))
    }

    async fn start(ctx: Arc<NodeContext>, probe: Arc<Probe>, spec: SupervisorSpec) -> Harness {
        Self::start_with(ctx, probe, spec, None).await
    }

    async fn start_with(
        ctx: Arc<NodeContext>,
        probe: Arc<Probe>,
        spec: SupervisorSpec,
        on_escalate: Option<oneshot::Sender<Escalation>>,
    ) -> Harness {
        let events = ctx.events.subscribe();
        let mut args = SupervisorArgs::new(spec, ctx.clone());
        args.on_escalate = on_escalate;
        let (sup, handle) = Supervisor::start(args).await.expect("supervisor starts");
        Harness {
            ctx,
            probe,
            sup,
            handle: Some(handle),
            events,
        }
    }

    /// A supervisor `sup` with test children of the given ids, in order.
    async fn with_children(strategy: Strategy, ids: &[&str]) -> Harness {
        let (ctx, probe) = Self::parts();
        let mut spec = SupervisorSpec::new("sup", strategy)
            .intensity(100, Duration::from_secs(60))
            .backoff(quick_backoff());
        for id in ids {
            spec = spec.child(test_child(id, &probe, &ctx, false));
        }
        Self::start(ctx, probe, spec).await
    }

    async fn which(&self) -> Vec<ChildView> {
        which(&self.sup).await
    }

    async fn send(&self, id: &str, msg: TestMsg) {
        send(&self.sup, &self.probe, id, msg).await;
    }

    async fn settled(&self, id: &str, restarts: u32) -> Vec<ChildView> {
        settled(&self.sup, id, restarts).await
    }

    /// Waits for the supervisor's task to end.
    async fn join(&mut self) {
        let handle = self.handle.take().expect("joined once");
        tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("supervisor did not stop within the deadline")
            .expect("supervisor task panicked");
    }

    async fn stop(mut self) {
        self.sup
            .stop_and_wait(None, Some(DEADLINE))
            .await
            .expect("supervisor stops");
        self.join().await;
    }

    /// Every event published so far that this harness has not read yet.
    fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(stamped) => out.push(stamped.event.clone()),
                Err(broadcast::error::TryRecvError::Empty) => return out,
                Err(e) => panic!("event channel: {e}"),
            }
        }
    }
}

async fn which(sup: &ActorRef<SupervisorMsg>) -> Vec<ChildView> {
    call_t!(sup, SupervisorMsg::Which, CALL_MS).expect("Which answers")
}

/// Sends `msg` to the current incarnation of test child `id` of `sup`.
async fn send(sup: &ActorRef<SupervisorMsg>, probe: &Probe, id: &str, msg: TestMsg) {
    let views = which(sup).await;
    let pid = view(&views, id)
        .pid
        .unwrap_or_else(|| panic!("child {id} has no pid: {views:?}"));
    probe
        .actor(pid)
        .cast(msg)
        .unwrap_or_else(|e| panic!("cannot message child {id}: {e}"));
}

/// Waits until child `id` of `sup` has been restarted `restarts` times and every slot runs.
async fn settled(sup: &ActorRef<SupervisorMsg>, id: &str, restarts: u32) -> Vec<ChildView> {
    eventually(&format!("{id} restarted {restarts} time(s)"), async || {
        let views = which(sup).await;
        let done = views.iter().any(|v| v.id == id && v.restarts == restarts)
            && views
                .iter()
                .all(|v| v.state == SlotState::Running && v.pid.is_some());
        done.then_some(views)
    })
    .await
}

fn view<'a>(views: &'a [ChildView], id: &str) -> &'a ChildView {
    views
        .iter()
        .find(|v| v.id == id)
        .unwrap_or_else(|| panic!("no child {id} in {views:?}"))
}

fn ids(views: &[ChildView]) -> Vec<String> {
    views.iter().map(|v| v.id.clone()).collect()
}

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const ABCD: [&str; 4] = ["A", "B", "C", "D"];

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Fails `failing` among A, B, C, D under `strategy` and checks the exact log after the
/// failure, and that exactly the children started again got new pids.
async fn strategy_case(strategy: Strategy, failing: &str, expected: &[&str]) {
    let h = Harness::with_children(strategy, &ABCD).await;
    assert_eq!(
        h.probe.log(),
        strings(&["start:A", "start:B", "start:C", "start:D"])
    );
    let before = h.which().await;
    let mark = h.probe.len();
    h.send(failing, TestMsg::Fail).await;
    let after = h.settled(failing, 1).await;

    assert_eq!(
        h.probe.since(mark),
        strings(expected),
        "{strategy} {failing}"
    );
    assert_eq!(ids(&after), strings(&ABCD));
    for id in ABCD {
        let (old, new) = (view(&before, id), view(&after, id));
        if expected.contains(&format!("start:{id}").as_str()) {
            assert_ne!(old.pid, new.pid, "{id} should have a new incarnation");
            assert_eq!(new.restarts, 1, "{id}");
        } else {
            assert_eq!(old.pid, new.pid, "{id} should not have been touched");
            assert_eq!(new.restarts, 0, "{id}");
        }
    }
    let failed = view(&after, failing);
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("failed on request")),
        "{failed:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_first_child() {
    strategy_case(Strategy::OneForOne, "A", &["start:A"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_middle_child() {
    strategy_case(Strategy::OneForOne, "B", &["start:B"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_last_child() {
    strategy_case(Strategy::OneForOne, "D", &["start:D"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_first_child() {
    strategy_case(
        Strategy::OneForAll,
        "A",
        &[
            "stop:D", "stop:C", "stop:B", "start:A", "start:B", "start:C", "start:D",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_middle_child() {
    strategy_case(
        Strategy::OneForAll,
        "C",
        &[
            "stop:D", "stop:B", "stop:A", "start:A", "start:B", "start:C", "start:D",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_last_child() {
    strategy_case(
        Strategy::OneForAll,
        "D",
        &[
            "stop:C", "stop:B", "stop:A", "start:A", "start:B", "start:C", "start:D",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_first_child() {
    strategy_case(
        Strategy::RestForOne,
        "A",
        &[
            "stop:D", "stop:C", "stop:B", "start:A", "start:B", "start:C", "start:D",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_middle_child() {
    strategy_case(
        Strategy::RestForOne,
        "B",
        &["stop:D", "stop:C", "start:B", "start:C", "start:D"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_last_child() {
    strategy_case(Strategy::RestForOne, "D", &["start:D"]).await;
}

// ---------------------------------------------------------------------------------------
// Kinds of exit
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_failure_like_an_error() {
    let mut h = Harness::with_children(Strategy::RestForOne, &["A", "B", "C"]).await;
    let mark = h.probe.len();
    h.send("B", TestMsg::Panic).await;
    let after = h.settled("B", 1).await;
    assert_eq!(
        h.probe.since(mark),
        strings(&["stop:C", "start:B", "start:C"])
    );
    let b = view(&after, "B");
    assert!(
        b.last_error
            .as_deref()
            .is_some_and(|e| e.contains("B panicked on request")),
        "{b:?}"
    );
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::ChildFailed { supervisor, child, reason }
                if supervisor == "sup" && child == "B" && reason.contains("panicked on request"))),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_is_abnormal_and_restarts_a_transient_child() {
    let (ctx, probe) = Harness::parts();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .backoff(quick_backoff())
        .child(test_child("T", &probe, &ctx, false).restart(Restart::Transient));
    let h = Harness::start(ctx, probe, spec).await;
    let before = h.which().await;
    let pid = view(&before, "T").pid.expect("T runs");
    let mark = h.probe.len();
    h.probe.actor(pid).get_cell().kill();
    let after = h.settled("T", 1).await;
    let t = view(&after, "T");
    assert_ne!(t.pid, Some(pid));
    assert_eq!(t.last_error.as_deref(), Some("killed"));
    // A kill skips post_stop: only the new start is logged.
    assert_eq!(h.probe.since(mark), strings(&["start:T"]));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Restart types
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_child_restarted_only_on_failure() {
    let (ctx, probe) = Harness::parts();
    // Under one_for_all: T1, once exited normally, must also not be started again when its
    // sibling's failure restarts "all" children.
    let spec = SupervisorSpec::new("sup", Strategy::OneForAll)
        .backoff(quick_backoff())
        .child(test_child("T1", &probe, &ctx, false).restart(Restart::Transient))
        .child(test_child("T2", &probe, &ctx, false).restart(Restart::Transient));
    let h = Harness::start(ctx, probe, spec).await;

    // Normal exit: not restarted, the slot stays, stopped.
    let mark = h.probe.len();
    h.send("T1", TestMsg::Exit).await;
    let sup = h.sup.clone();
    let views = eventually("T1 stopped", async || {
        let views = which(&sup).await;
        (view(&views, "T1").state == SlotState::Stopped).then_some(views)
    })
    .await;
    let t1 = view(&views, "T1");
    assert_eq!(t1.pid, None);
    assert_eq!(t1.restarts, 0);
    assert_eq!(t1.last_error, None);
    assert_eq!(h.probe.since(mark), strings(&["stop:T1"]));

    // Failure: restarted.
    let mark = h.probe.len();
    h.send("T2", TestMsg::Fail).await;
    let sup = h.sup.clone();
    let views = eventually("T2 restarted", async || {
        let views = which(&sup).await;
        let t2 = view(&views, "T2");
        (t2.restarts == 1 && t2.state == SlotState::Running).then_some(views)
    })
    .await;
    assert_eq!(h.probe.since(mark), strings(&["start:T2"]));
    // T1 is still stopped and was started only once.
    assert_eq!(view(&views, "T1").state, SlotState::Stopped);
    assert_eq!(h.probe.count("start:T1"), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_child_not_restarted_on_its_own_failure() {
    let (ctx, probe) = Harness::parts();
    // Under one_for_all, so a wrong restart of the temporary child would also show
    // as a restart of its siblings.
    let spec = SupervisorSpec::new("sup", Strategy::OneForAll)
        .backoff(quick_backoff())
        .child(test_child("A", &probe, &ctx, false))
        .child(test_child("T", &probe, &ctx, false).restart(Restart::Temporary))
        .child(test_child("C", &probe, &ctx, false));
    let h = Harness::start(ctx, probe, spec).await;
    let before = h.which().await;
    let mark = h.probe.len();
    h.send("T", TestMsg::Fail).await;
    let sup = h.sup.clone();
    let after = eventually("T removed", async || {
        let views = which(&sup).await;
        (views.len() == 2).then_some(views)
    })
    .await;
    assert_eq!(ids(&after), strings(&["A", "C"]));
    assert!(h.probe.since(mark).is_empty(), "{:?}", h.probe.since(mark));
    for id in ["A", "C"] {
        assert_eq!(view(&after, id).pid, view(&before, id).pid);
        assert_eq!(view(&after, id).restarts, 0);
    }
    h.stop().await;
}

async fn temporary_taken_down_case(
    strategy: Strategy,
    children: &[&str],
    failing: &str,
    expected: &[&str],
) {
    let (ctx, probe) = Harness::parts();
    let mut spec = SupervisorSpec::new("sup", strategy).backoff(quick_backoff());
    for id in children {
        let mut child = test_child(id, &probe, &ctx, false);
        if *id == "T" {
            child = child.restart(Restart::Temporary);
        }
        spec = spec.child(child);
    }
    let h = Harness::start(ctx, probe, spec).await;
    let mark = h.probe.len();
    h.send(failing, TestMsg::Fail).await;
    let after = h.settled(failing, 1).await;
    // T was stopped with its siblings, then dropped rather than started again.
    assert_eq!(h.probe.since(mark), strings(expected));
    let expected_ids: Vec<String> = strings(children)
        .into_iter()
        .filter(|id| id != "T")
        .collect();
    assert_eq!(ids(&after), expected_ids);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_child_taken_down_by_sibling_one_for_all() {
    temporary_taken_down_case(
        Strategy::OneForAll,
        &["A", "T", "C"],
        "A",
        &["stop:C", "stop:T", "start:A", "start:C"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_child_taken_down_by_sibling_rest_for_one() {
    temporary_taken_down_case(
        Strategy::RestForOne,
        &["A", "B", "T", "D"],
        "B",
        &["stop:D", "stop:T", "start:B", "start:D"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Restart intensity and escalation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intensity_exceeded_escalates_top_level_supervisor() {
    let (ctx, probe) = Harness::parts();
    let mut spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .intensity(3, Duration::from_secs(5))
        .backoff(quick_backoff());
    for id in ABCD {
        spec = spec.child(test_child(id, &probe, &ctx, false));
    }
    let (tx, rx) = oneshot::channel();
    let mut h = Harness::start_with(ctx, probe, spec, Some(tx)).await;

    // Three restarts are within the allowed intensity.
    for n in 1..=3 {
        h.send("B", TestMsg::Fail).await;
        h.settled("B", n).await;
    }
    assert_eq!(h.sup.get_status(), ActorStatus::Running);

    // The fourth within the period is one too many: stop the others, fail.
    let mark = h.probe.len();
    h.send("B", TestMsg::Fail).await;
    h.join().await;
    assert_eq!(h.sup.get_status(), ActorStatus::Stopped);
    assert_eq!(
        h.probe.since(mark),
        strings(&["stop:D", "stop:C", "stop:A"])
    );

    let escalation = tokio::time::timeout(DEADLINE, rx)
        .await
        .expect("escalation within the deadline")
        .expect("on_escalate is told");
    assert_eq!(escalation.supervisor, "sup");
    assert_eq!(escalation.child, "B");
    assert!(
        escalation.reason.contains("B failed on request"),
        "{escalation:?}"
    );

    let events = h.events();
    let escalated: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Escalated {
                supervisor, child, ..
            } => Some((supervisor.as_str(), child.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(escalated, [("sup", "B")]);
    let restarted = events
        .iter()
        .filter(|e| matches!(e, Event::ChildRestarted { .. }))
        .count();
    assert_eq!(restarted, 3, "{events:?}");
    // Nothing of the supervisor or its children remains in the directory.
    assert!(h.ctx.directory.is_empty(), "{}", h.ctx.directory.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_fails_up_to_parent_which_restarts_the_child_supervisor() {
    let (ctx, probe) = Harness::parts();
    let inner = SupervisorSpec::new("inner", Strategy::OneForOne)
        .intensity(3, Duration::from_secs(5))
        .backoff(quick_backoff())
        .child(test_child("A", &probe, &ctx, false))
        .child(test_child("B", &probe, &ctx, false));
    let parent = SupervisorSpec::new("parent", Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(quick_backoff())
        .child(test_child("P", &probe, &ctx, false))
        .child(Supervisor::child(inner, ctx.clone(), None));
    let mut h = Harness::start(ctx, probe, parent).await;
    assert_eq!(h.probe.log(), strings(&["start:P", "start:A", "start:B"]));

    let before = h.which().await;
    let inner_pid = view(&before, "inner").pid.expect("inner runs");
    let inner: ActorRef<SupervisorMsg> = h
        .ctx
        .directory
        .get(inner_pid)
        .expect("inner supervisor in the directory")
        .cell
        .into();
    for n in 1..=3 {
        send(&inner, &h.probe, "A", TestMsg::Fail).await;
        settled(&inner, "A", n).await;
    }
    let mark = h.probe.len();
    send(&inner, &h.probe, "A", TestMsg::Fail).await;

    // The parent sees the inner supervisor fail and restarts it (one_for_one: P untouched).
    let after = h.settled("inner", 1).await;
    let new_inner = view(&after, "inner");
    assert_ne!(new_inner.pid, Some(inner_pid));
    assert!(
        new_inner
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("`inner` gave up")),
        "{new_inner:?}"
    );
    assert_eq!(view(&after, "P").pid, view(&before, "P").pid);
    assert_eq!(view(&after, "P").restarts, 0);
    // The failing inner stopped its other child; the new inner started both afresh.
    assert_eq!(
        h.probe.since(mark),
        strings(&["stop:B", "start:A", "start:B"])
    );
    assert_eq!(inner.get_status(), ActorStatus::Stopped);
    let new_inner_ref: ActorRef<SupervisorMsg> = h
        .ctx
        .directory
        .get(new_inner.pid.unwrap())
        .expect("new inner supervisor in the directory")
        .cell
        .into();
    let inner_views = which(&new_inner_ref).await;
    assert_eq!(ids(&inner_views), strings(&["A", "B"]));
    assert!(
        inner_views
            .iter()
            .all(|v| v.restarts == 0 && v.state == SlotState::Running)
    );
    assert!(h.ctx.directory.get(inner_pid).is_none());

    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::Escalated { supervisor, child, .. } if supervisor == "inner" && child == "A")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e,
            Event::ChildFailed { supervisor, child, .. } if supervisor == "parent" && child == "inner")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e,
            Event::ChildRestarted { supervisor, child, restarts: 1, .. }
                if supervisor == "parent" && child == "inner")),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e,
            Event::Escalated { supervisor, .. } if supervisor == "parent")),
        "{events:?}"
    );

    // The parent is fine and still supervises the new inner supervisor.
    assert_eq!(h.sup.get_status(), ActorStatus::Running);
    // Shutdown goes depth-first in reverse: the inner supervisor's children, then P.
    let (probe, ctx) = (h.probe.clone(), h.ctx.clone());
    let mark = probe.len();
    h.stop().await;
    assert_eq!(probe.since(mark), strings(&["stop:B", "stop:A", "stop:P"]));
    assert!(ctx.directory.is_empty(), "{}", ctx.directory.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_spread_beyond_the_period_do_not_escalate() {
    let (ctx, probe) = Harness::parts();
    let within = Duration::from_millis(150);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .intensity(3, within)
        // A restart that is not the first within the period would be delayed and show as
        // a RestartScheduled event.
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            jitter: 0.0,
        })
        .child(test_child("A", &probe, &ctx, false));
    let (tx, mut rx) = oneshot::channel();
    let mut h = Harness::start_with(ctx, probe, spec, Some(tx)).await;
    for n in 1..=5 {
        h.send("A", TestMsg::Fail).await;
        h.settled("A", n).await;
        tokio::time::sleep(within * 2).await;
    }
    assert_eq!(h.sup.get_status(), ActorStatus::Running);
    assert!(matches!(
        rx.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    let events = h.events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Escalated { .. } | Event::RestartScheduled { .. })),
        "{events:?}"
    );
    let restarted = events
        .iter()
        .filter(|e| matches!(e, Event::ChildRestarted { .. }))
        .count();
    assert_eq!(restarted, 5);
    h.stop().await;
}

/// A child whose restarts fail to start: each failed start counts as a restart (retried
/// with backoff) until intensity is exceeded and the supervisor escalates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_restarts_count_toward_intensity_and_escalate() {
    let (ctx, probe) = Harness::parts();
    let args = ChildArgs {
        id: "A".into(),
        probe: probe.clone(),
        ctx: ctx.clone(),
        hang_on_stop: false,
    };
    let unrestartable = ChildSpec::new("A", move |sup, incarnation| {
        let args = args.clone();
        async move {
            if incarnation > 0 {
                return Err(ractor::SpawnErr::StartupFailed("cannot start again".into()));
            }
            Actor::spawn_linked(None, TestChild, args, sup)
                .await
                .map(|(r, _)| r.get_cell())
        }
    });
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .intensity(3, Duration::from_secs(5))
        .backoff(quick_backoff())
        .child(test_child("B", &probe, &ctx, false))
        .child(unrestartable);
    let (tx, rx) = oneshot::channel();
    let mut h = Harness::start_with(ctx, probe, spec, Some(tx)).await;
    h.send("A", TestMsg::Fail).await;
    h.join().await;

    assert_eq!(h.probe.log(), strings(&["start:B", "start:A", "stop:B"]));
    let escalation = rx.await.expect("on_escalate is told");
    assert_eq!(escalation.supervisor, "sup");
    assert_eq!(escalation.child, "A");
    assert!(
        escalation.reason.contains("cannot start again"),
        "{escalation:?}"
    );
    let events = h.events();
    let scheduled: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::RestartScheduled {
                attempt, delay_ms, ..
            } => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, [(2, 1), (3, 2)]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ChildRestarted { .. })),
        "{events:?}"
    );
    // The failed supervisor left the directory like its children did.
    assert!(h.ctx.directory.is_empty(), "{}", h.ctx.directory.len());
}

// ---------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_delays_grow_and_are_capped() {
    let (ctx, probe) = Harness::parts();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .intensity(100, Duration::from_secs(60))
        .backoff(Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(40),
            jitter: 0.0,
        })
        .child(test_child("A", &probe, &ctx, false));
    let mut h = Harness::start(ctx, probe, spec).await;
    for n in 1..=7 {
        h.send("A", TestMsg::Fail).await;
        h.settled("A", n).await;
    }
    let events = h.events();
    let scheduled: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::RestartScheduled {
                supervisor,
                child,
                attempt,
                delay_ms,
            } if supervisor == "sup" && child == "A" => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect();
    // The first restart is immediate (no event); then 5, 10, 20, 40 and capped at 40.
    assert_eq!(
        scheduled,
        [(2, 5), (3, 10), (4, 20), (5, 40), (6, 40), (7, 40)]
    );
    let restarted: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::ChildRestarted {
                child, restarts, ..
            } if child == "A" => Some(*restarts),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, (1..=7).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_restart_is_visible_as_restarting() {
    let (ctx, probe) = Harness::parts();
    let delay = Duration::from_secs(2);
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .intensity(100, Duration::from_secs(60))
        .backoff(Backoff {
            initial: delay,
            max: delay,
            jitter: 0.0,
        })
        .child(test_child("A", &probe, &ctx, false))
        .child(test_child("B", &probe, &ctx, false));
    let mut h = Harness::start(ctx, probe, spec).await;
    h.send("A", TestMsg::Fail).await;
    h.settled("A", 1).await;
    h.send("A", TestMsg::Fail).await;
    let sup = h.sup.clone();
    let views = eventually("A restarting", async || {
        let views = which(&sup).await;
        (view(&views, "A").state == SlotState::Restarting).then_some(views)
    })
    .await;
    assert_eq!(view(&views, "A").pid, None);
    assert_eq!(view(&views, "B").state, SlotState::Running);
    let tree = h
        .ctx
        .directory
        .tree(h.sup.get_id().pid())
        .expect("supervisor in the directory");
    let a = tree
        .children
        .iter()
        .find(|c| c.name == "A")
        .expect("slot A");
    assert_eq!(a.status, "restarting");
    // No actor to name: the slot is addressed through its supervisor.
    assert_eq!(a.id, format!("{}:A", h.sup.get_id().pid()));
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::RestartScheduled { child, attempt: 2, delay_ms: 2000, .. } if child == "A")),
        "{events:?}"
    );
    // And after the delay it runs again.
    h.settled("A", 2).await;
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_children_in_reverse_start_order() {
    let h = Harness::with_children(Strategy::OneForOne, &ABCD).await;
    let (probe, ctx) = (h.probe.clone(), h.ctx.clone());
    let sup_pid = h.sup.get_id().pid();
    assert_eq!(ctx.directory.len(), 5);
    let mark = probe.len();
    h.stop().await;
    assert_eq!(
        probe.since(mark),
        strings(&["stop:D", "stop:C", "stop:B", "stop:A"])
    );
    assert!(ctx.directory.is_empty(), "{}", ctx.directory.len());
    assert!(ctx.directory.tree(sup_pid).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_hanging_in_post_stop_is_killed_after_its_timeout() {
    let (ctx, probe) = Harness::parts();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .child(test_child("A", &probe, &ctx, false))
        .child(
            test_child("H", &probe, &ctx, true)
                .shutdown(Shutdown::Timeout(Duration::from_millis(200))),
        )
        .child(test_child("C", &probe, &ctx, false));
    let mut h = Harness::start(ctx, probe, spec).await;
    let hung = view(&h.which().await, "H").pid.expect("H runs");
    let mark = h.probe.len();
    h.sup.stop(None);
    let sup = h.sup.clone();
    eventually("supervisor stopped", async || {
        (sup.get_status() == ActorStatus::Stopped).then_some(())
    })
    .await;
    h.join().await;
    assert_eq!(
        h.probe.since(mark),
        strings(&["stop:C", "stop:H", "stop:A"])
    );
    assert_eq!(h.probe.actor(hung).get_status(), ActorStatus::Stopped);
    assert!(h.ctx.directory.is_empty(), "{}", h.ctx.directory.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brutal_child_is_killed_without_post_stop() {
    let (ctx, probe) = Harness::parts();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne)
        .child(test_child("A", &probe, &ctx, false))
        .child(test_child("B", &probe, &ctx, false).shutdown(Shutdown::Brutal))
        .child(test_child("C", &probe, &ctx, false));
    let h = Harness::start(ctx, probe, spec).await;
    let b = view(&h.which().await, "B").pid.expect("B runs");
    let (probe, ctx) = (h.probe.clone(), h.ctx.clone());
    let mark = probe.len();
    h.stop().await;
    assert_eq!(probe.since(mark), strings(&["stop:C", "stop:A"]));
    assert_eq!(probe.actor(b).get_status(), ActorStatus::Stopped);
    assert!(ctx.directory.is_empty(), "{}", ctx.directory.len());
}

// ---------------------------------------------------------------------------------------
// Dynamic children
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_start_terminate_restart() {
    let h = Harness::with_children(Strategy::OneForOne, &["A"]).await;
    let x = || test_child("X", &h.probe, &h.ctx, false);

    // start_child: added after the static children, supervised like them.
    let pid = call_t!(h.sup, SupervisorMsg::StartChild, CALL_MS, x())
        .expect("StartChild answers")
        .expect("X starts");
    let views = h.which().await;
    assert_eq!(ids(&views), strings(&["A", "X"]));
    assert_eq!(view(&views, "X").pid, Some(pid));
    assert_eq!(view(&views, "X").state, SlotState::Running);
    assert_eq!(h.probe.log(), strings(&["start:A", "start:X"]));

    h.send("X", TestMsg::Fail).await;
    let views = h.settled("X", 1).await;
    assert_ne!(view(&views, "X").pid, Some(pid));
    assert_eq!(h.probe.count("start:X"), 2);

    // A duplicate id is refused, without starting anything.
    let dup = call_t!(h.sup, SupervisorMsg::StartChild, CALL_MS, x()).expect("answers");
    assert!(
        matches!(&dup, Err(SupervisorError::DuplicateChild(id)) if id == "X"),
        "{dup:?}"
    );
    assert_eq!(h.probe.count("start:X"), 2);
    assert_eq!(h.which().await.len(), 2);

    // terminate_child: stopped and stays stopped.
    let mark = h.probe.len();
    let stopped = call_t!(
        h.sup,
        SupervisorMsg::TerminateChild,
        CALL_MS,
        "X".to_string()
    )
    .expect("answers");
    assert!(stopped.is_ok(), "{stopped:?}");
    let views = h.which().await;
    assert_eq!(view(&views, "X").state, SlotState::Stopped);
    assert_eq!(view(&views, "X").pid, None);
    assert_eq!(h.probe.since(mark), strings(&["stop:X"]));
    h.send("A", TestMsg::Fail).await;
    let sup = h.sup.clone();
    let views = eventually("A restarted", async || {
        let views = which(&sup).await;
        let a = view(&views, "A");
        (a.restarts == 1 && a.state == SlotState::Running).then_some(views)
    })
    .await;
    assert_eq!(view(&views, "X").state, SlotState::Stopped);
    assert_eq!(h.probe.count("start:X"), 2);
    let again = call_t!(
        h.sup,
        SupervisorMsg::TerminateChild,
        CALL_MS,
        "X".to_string()
    )
    .expect("answers");
    assert!(
        matches!(&again, Err(SupervisorError::NotRunning(id)) if id == "X"),
        "{again:?}"
    );

    // restart_child: running again, restarts incremented.
    let new_pid = call_t!(h.sup, SupervisorMsg::RestartChild, CALL_MS, "X".to_string())
        .expect("answers")
        .expect("X restarts");
    let views = h.which().await;
    let xv = view(&views, "X");
    assert_eq!(xv.pid, Some(new_pid));
    assert_eq!(xv.state, SlotState::Running);
    assert_eq!(xv.restarts, 2);
    assert_eq!(h.probe.count("start:X"), 3);

    // Unknown ids.
    let r = call_t!(
        h.sup,
        SupervisorMsg::RestartChild,
        CALL_MS,
        "nope".to_string()
    )
    .expect("answers");
    assert!(matches!(r, Err(SupervisorError::NoSuchChild(_))), "{r:?}");
    let t = call_t!(
        h.sup,
        SupervisorMsg::TerminateChild,
        CALL_MS,
        "nope".to_string()
    )
    .expect("answers");
    assert!(matches!(t, Err(SupervisorError::NoSuchChild(_))), "{t:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_child_stays_stopped_when_siblings_restart() {
    let h = Harness::with_children(Strategy::OneForAll, &["A", "B", "C"]).await;
    let stopped = call_t!(
        h.sup,
        SupervisorMsg::TerminateChild,
        CALL_MS,
        "B".to_string()
    )
    .expect("answers");
    assert!(stopped.is_ok(), "{stopped:?}");
    let mark = h.probe.len();
    h.send("A", TestMsg::Fail).await;
    let sup = h.sup.clone();
    let views = eventually("A and C restarted", async || {
        let views = which(&sup).await;
        let done = ["A", "C"].iter().all(|id| {
            let v = view(&views, id);
            v.restarts == 1 && v.state == SlotState::Running
        });
        done.then_some(views)
    })
    .await;
    assert_eq!(
        h.probe.since(mark),
        strings(&["stop:C", "start:A", "start:C"])
    );
    assert_eq!(view(&views, "B").state, SlotState::Stopped);
    assert_eq!(view(&views, "B").pid, None);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_shows_each_restart_and_empties_on_stop() {
    let h = Harness::with_children(Strategy::OneForOne, &["A", "B"]).await;
    let ctx = h.ctx.clone();
    let sup_pid = h.sup.get_id().pid();
    let tree = ctx
        .directory
        .tree(sup_pid)
        .expect("supervisor in the directory");
    assert_eq!(tree.name, "sup");
    assert_eq!(tree.kind, ActorKind::Supervisor);
    assert_eq!(tree.strategy, Some(Strategy::OneForOne));
    let names: Vec<&str> = tree.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["A", "B"]);
    let a_id = tree.children[0].id.clone();
    let views = h.which().await;
    assert_eq!(a_id, view(&views, "A").pid.unwrap().to_string());

    for n in 1..=3 {
        let old = view(&h.which().await, "B").pid.unwrap();
        h.send("B", TestMsg::Fail).await;
        let views = h.settled("B", n).await;
        let new = view(&views, "B").pid.unwrap();
        let tree = ctx
            .directory
            .tree(sup_pid)
            .expect("supervisor in the directory");
        assert_eq!(tree.children.len(), 2);
        let (a, b) = (&tree.children[0], &tree.children[1]);
        assert_eq!(b.name, "B");
        assert_eq!(b.id, new.to_string());
        assert_eq!(b.restarts, n);
        // The actor may still be finishing post_start ("starting"), never anything else.
        assert!(matches!(b.status.as_str(), "starting" | "running"), "{b:?}");
        assert!(
            b.last_error
                .as_deref()
                .is_some_and(|e| e.contains("B failed on request")),
            "{b:?}"
        );
        assert_eq!(a.id, a_id);
        assert_eq!(a.restarts, 0);
        assert!(ctx.directory.get(old).is_none());
        assert_eq!(ctx.directory.len(), 3);
        eventually("restarted B running in the tree", async || {
            let tree = ctx.directory.tree(sup_pid)?;
            let b = tree.children.iter().find(|c| c.name == "B")?;
            (b.id == new.to_string() && b.status == "running").then_some(())
        })
        .await;
    }

    h.stop().await;
    assert!(ctx.directory.is_empty(), "{}", ctx.directory.len());
    assert!(ctx.directory.tree(sup_pid).is_none());
}
