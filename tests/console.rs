//! The operator console (DESIGN §7) in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini) against a three-node cluster. The page asks
//! for the admin token, lists the three members, shows n1's and n2's supervision trees,
//! kills an agent with its button (its restart count goes up as its supervisor brings it
//! back), submits the default two-step plan and watches its graph and trace finish, and
//! draws its charts.
//!
//! Like the NATS and PostgreSQL tests, this never skips: without `chromedriver` (Debian
//! packages `chromium` and `chromium-driver`, which `scripts/test.sh` installs) it fails,
//! naming them. On a failure the page's screenshot and source are written under
//! `target/console-screenshots/`, named after the step that failed.

mod common;

use std::future::Future;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Member, cluster_name, wait_status};
use common::nats::NatsServer;
use common::{TestNode, free_port, http_client, postgres_database};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "console-t0ken";

/// How long anything the page is waited for may take (the machine is shared and noisy).
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(200);

/// Installed before any of the page's scripts in every document: collects uncaught
/// errors, failed script or stylesheet loads and unhandled promise rejections, and every
/// `confirm()` the page asks with its answer.
const PAGE_PROBES: &str = r#"
window.__msErrors = [];
window.addEventListener("error", (e) => {
  const src = e.target && (e.target.src || e.target.href);
  window.__msErrors.push(src ? `failed to load ${src}`
    : `${e.message} at ${e.filename}:${e.lineno}:${e.colno}`);
}, true);
window.addEventListener("unhandledrejection", (e) => {
  const r = e.reason;
  window.__msErrors.push(`unhandled rejection: ${r && (r.stack || r.message) || r}`);
});
window.__msConfirms = [];
{
  const ask = window.confirm;
  window.confirm = (message) => {
    const yes = ask.call(window, message);
    window.__msConfirms.push(`${message} -> ${yes}`);
    return yes;
  };
}
"#;

// ---------------------------------------------------------------------------------------
// chromedriver

/// A `chromedriver` of this test, in a process group of its own (with the Chromium it
/// starts): the whole group is killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chromedriver` on PATH, else Debian's `/usr/bin/chromedriver`; fails the test, naming
/// the packages to install, when there is none.
fn chromedriver_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromedriver"))
            .find(|p| p.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    let debian = PathBuf::from("/usr/bin/chromedriver");
    if debian.is_file() {
        return debian;
    }
    panic!(
        "no chromedriver on PATH or at /usr/bin/chromedriver. The console test drives a \
         real headless Chromium and never skips: install it (on Debian: `apt-get install \
         chromium chromium-driver`), or run scripts/test.sh, which installs both."
    )
}

/// Starts chromedriver on a free port and waits until its `/status` says ready.
async fn start_chromedriver(logs: &Path) -> Chromedriver {
    let binary = chromedriver_binary();
    let client = http_client();
    for attempt in 1..=5 {
        let port = free_port();
        let log = logs.join(format!("chromedriver-{attempt}.log"));
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key
                .to_str()
                .is_some_and(|k| k.to_ascii_lowercase().ends_with("_proxy"))
            {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let mut driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                eprintln!(
                    "chromedriver on port {port} exited ({status}); trying another port; \
                     its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                break;
            }
            let ready = client
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK);
            if let Some(r) = ready
                && r.json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool())
                    == Some(true)
            {
                return driver;
            }
            if start.elapsed() > PAGE_DEADLINE {
                panic!(
                    "chromedriver ({}) did not get ready on port {port} within \
                     {PAGE_DEADLINE:?}; its log:\n{}",
                    binary.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(driver);
    }
    panic!("chromedriver could not start in 5 attempts (see the log lines above)")
}

/// A WebDriver session on headless Chromium.
async fn open_browser(driver: &Chromedriver) -> Client {
    // rustls has more than one crypto provider compiled in here: pick the project's.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut chrome = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-proxy-server", "--window-size=1400,1000",
        ],
    });
    if Path::new("/usr/bin/chromium").is_file() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), chrome);
    let client = ClientBuilder::rustls()
        .expect("the WebDriver client's TLS roots")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "starting headless Chromium through chromedriver at {}: {e} (are the Debian \
                 packages chromium and chromium-driver of the same version?)",
                driver.url
            )
        });
    // The probes go in before the page's own scripts (a DevTools command;
    // WebDriver has none for it).
    let session = client
        .session_id()
        .await
        .expect("the WebDriver session id")
        .expect("a WebDriver session");
    let url = format!("{}/session/{session}/goog/cdp/execute", driver.url);
    let body = json!({
        "cmd": "Page.addScriptToEvaluateOnNewDocument",
        "params": {"source": PAGE_PROBES},
    });
    let response = http_client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "POST {url}: {}",
        response.text().await.unwrap_or_default()
    );
    client
}

// ---------------------------------------------------------------------------------------
// The page

/// Runs `script` (a function body) in the page and gives its value.
async fn js(client: &Client, script: &str) -> Result<Value, String> {
    client
        .execute(script, Vec::new())
        .await
        .map_err(|e| format!("running a script in the page: {e}"))
}

/// Polls `probe` until it gives `Ok`; after [`PAGE_DEADLINE`], an error naming `what`
/// and the last thing the probe saw.
async fn until<T, F, Fut>(what: &str, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(last) if start.elapsed() > PAGE_DEADLINE => {
                return Err(format!(
                    "timed out after {PAGE_DEADLINE:?} waiting for {what}; last seen: {last}"
                ));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Clicks the element `css` finds, trying again while the page replaces it (the views
/// re-render every second or two).
async fn click(client: &Client, css: &str) -> Result<(), String> {
    until(&format!("a click on {css}"), || async move {
        let element = client
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("finding {css}: {e}"))?;
        element
            .click()
            .await
            .map_err(|e| format!("clicking {css}: {e}"))
    })
    .await
}

/// Where failure evidence goes: `target/console-screenshots/`.
fn evidence_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is under the target dir")
        .join("console-screenshots")
}

/// The browser with what a failure report needs.
struct Console<'a> {
    client: Client,
    n1: &'a TestNode,
}

impl Console<'_> {
    /// The uncaught errors the page collected so far.
    async fn page_errors(&self) -> Vec<String> {
        match js(
            &self.client,
            "return window.__msErrors || ['(no error collector)'];",
        )
        .await
        {
            Ok(Value::Array(errors)) => errors
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect(),
            Ok(other) => vec![format!("(unexpected: {other})")],
            Err(e) => vec![format!("(cannot read them: {e})")],
        }
    }

    /// Passes `result` through; on an error, writes the page's screenshot and source under
    /// `target/console-screenshots/<step>.*`, ends the browser session and fails the test
    /// naming the step.
    async fn check<T>(&self, step: &str, result: Result<T, String>) -> T {
        let error = match result {
            Ok(value) => return value,
            Err(e) => e,
        };
        let dir = evidence_dir();
        let mut saved = Vec::new();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            saved.push(format!("(cannot create {}: {e})", dir.display()));
        }
        // A confirm() left open would refuse every other command.
        let _ = self.client.dismiss_alert().await;
        match self.client.screenshot().await {
            Ok(png) => {
                let path = dir.join(format!("{step}.png"));
                match std::fs::write(&path, png) {
                    Ok(()) => saved.push(path.display().to_string()),
                    Err(e) => saved.push(format!("(writing {}: {e})", path.display())),
                }
            }
            Err(e) => saved.push(format!("(no screenshot: {e})")),
        }
        match self.client.source().await {
            Ok(html) => {
                let path = dir.join(format!("{step}.html"));
                match std::fs::write(&path, html) {
                    Ok(()) => saved.push(path.display().to_string()),
                    Err(e) => saved.push(format!("(writing {}: {e})", path.display())),
                }
            }
            Err(e) => saved.push(format!("(no page source: {e})")),
        }
        let errors = self.page_errors().await;
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(unknown: {e})"));
        let view = js(
            &self.client,
            "const v = document.getElementById('view'); return v ? v.innerText.slice(0, 2000) : null;",
        )
        .await
        .unwrap_or_else(|e| json!(e));
        let _ = self.client.clone().close().await;
        let log = self.n1.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "console step `{step}` failed: {error}\n\
             page: {url}\n\
             page errors: {errors:#?}\n\
             view text: {view}\n\
             evidence: {saved:?}\n\
             --- n1's last log lines ---\n{}",
            tail.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The steps

/// The page asks for the token; with it, the Cluster tab lists the three nodes (n1
/// as `self`, n2 and n3 `up`).
async fn login_and_cluster(client: &Client) -> Result<(), String> {
    until("the login dialog to open", || async move {
        match js(client, "return document.getElementById('login').open;").await? {
            Value::Bool(true) => Ok(()),
            other => Err(format!("login open: {other}")),
        }
    })
    .await?;
    let field = client
        .find(Locator::Css("[data-testid=token]"))
        .await
        .map_err(|e| format!("the token field: {e}"))?;
    field
        .send_keys(TOKEN)
        .await
        .map_err(|e| format!("typing the token: {e}"))?;
    click(client, "[data-testid=token-ok]").await?;
    until("the login dialog to close", || async move {
        match js(client, "return document.getElementById('login').open;").await? {
            Value::Bool(false) => Ok(()),
            other => Err(format!("login open: {other}")),
        }
    })
    .await?;
    until(
        "n1 (self), n2 and n3 (up) on the Cluster tab",
        || async move {
            let rows = js(
                client,
                "return [...document.querySelectorAll('[data-testid=members] tr[data-node]')]
               .map((r) => [r.dataset.node,
                            (r.querySelector('[data-testid=status]') || {}).textContent]);",
            )
            .await?;
            let listed = |node: &str, status: &str| {
                rows.as_array()
                    .is_some_and(|rows| rows.iter().any(|r| r[0] == node && r[1] == status))
            };
            // The node the page talks to lists itself as `self`.
            if listed("n1", "self") && listed("n2", "up") && listed("n3", "up") {
                Ok(())
            } else {
                Err(format!("members: {rows}"))
            }
        },
    )
    .await?;
    until("the header to name n1", || async move {
        let text = js(
            client,
            "return document.querySelector('[data-testid=where]').textContent;",
        )
        .await?;
        if text == "node n1" {
            Ok(())
        } else {
            Err(format!("where: {text}"))
        }
    })
    .await
}

/// Waits until the tree tab shows `node`'s tree with an `executor-1` line.
async fn tree_of(client: &Client, node: &str) -> Result<(), String> {
    until(&format!("{node}'s tree with executor-1"), || async move {
        let seen = js(
            client,
            "return {
               of: (document.getElementById('of') || {}).textContent,
               lines: [...document.querySelectorAll('[data-testid=tree] [data-testid=actor]')]
                 .map((l) => l.dataset.name),
             };",
        )
        .await?;
        let lines = seen["lines"].as_array().cloned().unwrap_or_default();
        if seen["of"] == format!("of {node}")
            && lines.iter().any(|l| l == "executor-1")
            && lines.iter().any(|l| l == "worker-1")
            && lines.len() >= 13
        {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    })
    .await
}

/// The `#tree` tab (through its link) shows n1's tree; `#tree?node=n2` shows n2's.
async fn trees(client: &Client) -> Result<(), String> {
    click(client, "nav a[data-tab=tree]").await?;
    tree_of(client, "n1").await?;
    js(client, "location.hash = 'tree?node=n2';").await?;
    tree_of(client, "n2").await
}

/// A tree line's actor id and restart count.
async fn line_of(client: &Client, name: &str) -> Result<(String, u64), String> {
    let script = format!(
        "const l = document.querySelector('[data-testid=tree] [data-testid=actor][data-name=\"{name}\"]');
         return l ? [l.dataset.id, l.querySelector('[data-testid=restarts]').textContent] : null;"
    );
    let seen = js(client, &script).await?;
    let id = seen[0].as_str().ok_or(format!("no {name} line: {seen}"))?;
    let restarts = seen[1]
        .as_str()
        .and_then(|r| r.trim().parse().ok())
        .ok_or(format!("{name}'s restarts: {seen}"))?;
    Ok((id.to_string(), restarts))
}

/// On n1's tree, worker-1 killed with its button comes back with one more restart.
async fn kill_and_restart(client: &Client) -> Result<(), String> {
    const AGENT: &str = "worker-1";
    js(client, "location.hash = 'tree?node=n1';").await?;
    tree_of(client, "n1").await?;
    let (old_id, before) = until("worker-1's line", || line_of(client, AGENT)).await?;
    let line = format!("[data-testid=tree] [data-testid=actor][data-name=\"{AGENT}\"]");
    click(client, &line).await?;
    until("worker-1's detail with a kill button", || async move {
        let seen = js(
            client,
            "const d = document.querySelector('[data-testid=detail]');
             return [(d.querySelector('h3') || {}).textContent,
                     !!d.querySelector('[data-testid=kill]')];",
        )
        .await?;
        if seen[0] == AGENT && seen[1] == true {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    })
    .await?;
    // Clicked once (a retry after the confirm() opened would answer it): again only if the
    // button was replaced under the click (the detail is drawn again every second).
    let kill = "[data-testid=detail] [data-testid=kill]";
    until("a click on the kill button", || async move {
        let button = client
            .find(Locator::Css(kill))
            .await
            .map_err(|e| format!("finding {kill}: {e}"))?;
        match button.click().await {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.to_string().contains("stale") => Err(format!("clicking {kill}: {e}")),
            Err(e) => Ok(Err(format!("clicking {kill}: {e}"))),
        }
    })
    .await??;
    let question = until("the confirm() before the kill", || async move {
        client
            .get_alert_text()
            .await
            .map_err(|e| format!("no dialog: {e}"))
    })
    .await?;
    if !question.contains(&format!("kill {AGENT}")) {
        return Err(format!("the confirm() asked {question:?}"));
    }
    client
        .accept_alert()
        .await
        .map_err(|e| format!("accepting the confirm(): {e}"))?;
    let old_id = old_id.as_str();
    until("worker-1 back with one more restart", || async move {
        let (id, restarts) = line_of(client, AGENT).await?;
        if restarts == before + 1 && id != old_id {
            Ok(())
        } else {
            Err(format!(
                "{AGENT}: id {id} (was {old_id}), restarts {restarts} (was {before})"
            ))
        }
    })
    .await?;
    until("the kill's result", || async move {
        let text = js(
            client,
            "return (document.querySelector('[data-testid=op-result]') || {}).textContent;",
        )
        .await?;
        let said = text
            .as_str()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        match said {
            Some(r) if r["killed"] == true && r["id"] == old_id => Ok(()),
            _ => Err(format!("op-result: {text}")),
        }
    })
    .await?;
    // One question, asked by this view: not also by the views shown before it.
    let asked = js(client, "return window.__msConfirms;").await?;
    let expected = json!([format!("kill {AGENT} on n1? -> true")]);
    if asked == expected {
        Ok(())
    } else {
        Err(format!("the page asked {asked}, not just {expected}"))
    }
}

/// The default plan submitted from the Tasks tab runs to `succeeded`: the status, every
/// box of the graph and the trace say so. Gives the task's id.
async fn submit_task(client: &Client) -> Result<String, String> {
    click(client, "nav a[data-tab=tasks]").await?;
    until("the default plan in the spec box", || async move {
        let spec = js(
            client,
            "const s = document.querySelector('[data-testid=spec]'); return s && s.value;",
        )
        .await?;
        match spec.as_str().map(serde_json::from_str::<Value>) {
            Some(Ok(plan)) if plan["steps"].as_array().is_some_and(|s| s.len() == 2) => Ok(()),
            _ => Err(format!("spec: {spec}")),
        }
    })
    .await?;
    click(client, "[data-testid=submit]").await?;
    let id = until("the task's page", || async move {
        let seen = js(
            client,
            "return [location.hash,
                     (document.querySelector('[data-testid=task-id]') || {}).textContent];",
        )
        .await?;
        match (seen[0].as_str(), seen[1].as_str()) {
            (Some(hash), Some(id)) if hash == format!("#tasks?id={id}") && !id.is_empty() => {
                Ok(id.to_string())
            }
            _ => Err(seen.to_string()),
        }
    })
    .await?;
    until(
        "the task, its graph and its trace to say succeeded",
        || async move {
            let seen = js(
                client,
                "return {
               status: (document.querySelector('[data-testid=task-status]') || {}).textContent,
               steps: [...document.querySelectorAll('[data-testid=graph] g[data-step]')]
                 .map((g) => [g.dataset.step, g.dataset.status]),
               trace: [...document.querySelectorAll('[data-testid=trace] div[data-kind]')]
                 .map((d) => d.dataset.kind),
             };",
            )
            .await?;
            let steps = seen["steps"].as_array().cloned().unwrap_or_default();
            let trace = seen["trace"].as_array().cloned().unwrap_or_default();
            if seen["status"] == "succeeded"
                && steps.len() == 2
                && steps.iter().all(|s| s[1] == "succeeded")
                && trace.iter().any(|k| k == "succeeded")
            {
                Ok(())
            } else {
                Err(seen.to_string())
            }
        },
    )
    .await?;
    Ok(id)
}

/// The Charts tab draws its canvases.
async fn charts(client: &Client) -> Result<(), String> {
    click(client, "nav a[data-tab=charts]").await?;
    until("the charts' canvases", || async move {
        let count = js(
            client,
            "return document.querySelectorAll('[data-testid=charts] canvas').length;",
        )
        .await?;
        if count.as_u64().is_some_and(|n| n >= 4) {
            Ok(())
        } else {
            Err(format!(
                "{count} canvases; charts box: {}",
                js(
                    client,
                    "return document.querySelector('[data-testid=charts]').textContent;"
                )
                .await?
            ))
        }
    })
    .await
}

#[tokio::test]
async fn the_console_in_a_browser_logs_in_shows_the_cluster_kills_an_agent_and_runs_a_task() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("console");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1")
        .env("MISTER_SMITH__ADMIN__TOKEN", TOKEN)
        .start()
        .await;
    let _n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    let _n3 = Member::new(&cluster, &db, nats.url(), "n3").start().await;
    wait_status(&n1, &["n2", "n3"], "up").await;

    let logs = common::temp_dir();
    let driver = start_chromedriver(logs.path()).await;
    let console = Console {
        client: open_browser(&driver).await,
        n1: &n1,
    };
    let client = &console.client;
    let url = format!("{}/console", n1.admin_url());

    let opened = client
        .goto(&url)
        .await
        .map_err(|e| format!("opening {url}: {e}"));
    console.check("open", opened).await;
    console
        .check("login", login_and_cluster(client).await)
        .await;
    console.check("tree", trees(client).await).await;
    console.check("kill", kill_and_restart(client).await).await;
    let id = console.check("task", submit_task(client).await).await;
    console.check("charts", charts(client).await).await;

    // The task the page submitted is a real one of n1's, finished as the page said.
    let (status, task) = n1
        .get_json(&format!("{}/admin/api/v1/tasks/{id}", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "succeeded", "{task:#}");

    let errors = console.page_errors().await;
    let clean = if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("the page had uncaught errors: {errors:#?}"))
    };
    console.check("page-errors", clean).await;
    let _ = console.client.clone().close().await;
    drop(driver);
}
