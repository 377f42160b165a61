//! `GET /api/v1/openapi.json` (DESIGN §7): the document lists exactly the API's routes, and
//! what a real node answers conforms to it — every status it answers is documented for
//! that route, with the media type it sends, and every JSON body validates against the
//! documented schema (with `jsonschema`, the components embedded as `$defs`).
//!
//! The validation is strict about fields: a body with a field the document does not name
//! fails (the test adds `unevaluatedProperties: false` to the documented object schemas),
//! so a field added to an answer but not to the document is caught too. Each JSON body is
//! also checked the other way: a copy with an undocumented field must fail, so a check
//! that could never fail would show.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::TestNode;
use common::tasks::wait_final;
use mister_smith::config::auth::Secret;
use mister_smith::http::auth::{Claims, ROUTE_SCOPES, mint};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// Every route of the API listener with its methods, as the router serves them
/// (`src/http/mod.rs`), apart from the document itself.
const ROUTES: [(&str, &str); 18] = [
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/metrics"),
    ("get", "/api/v1/agents"),
    ("post", "/api/v1/tasks"),
    ("get", "/api/v1/tasks"),
    ("get", "/api/v1/tasks/{id}"),
    ("post", "/api/v1/tasks/{id}/cancel"),
    ("get", "/api/v1/tasks/{id}/events"),
    ("get", "/api/v1/tasks/{id}/steps/{step}/output"),
    ("post", "/api/v1/sessions"),
    ("get", "/api/v1/sessions"),
    ("get", "/api/v1/sessions/{id}"),
    ("post", "/api/v1/sessions/{id}/turns"),
    ("post", "/api/v1/sessions/{id}/end"),
    ("post", "/api/v1/sessions/{id}/turns/{turn}/{decision}"),
    ("get", "/api/v1/sessions/{id}/turns/{turn}/events"),
    ("get", "/api/v1/events/ws"),
];

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// An id no task has.
const NO_TASK: &str = "01900000-0000-7000-8000-000000000000";

// ---------------------------------------------------------------------------------------
// The document and schema validation.

struct Doc {
    doc: Value,
    /// `components.schemas` with refs rewritten to `#/$defs/…`, as documented.
    defs: Value,
    /// The same, closed: no field beyond the documented ones.
    strict_defs: Value,
}

/// One answer of the node.
struct Answer {
    status: StatusCode,
    /// The `Content-Type` without parameters.
    media_type: String,
    text: String,
}

impl Doc {
    async fn fetch(node: &TestNode) -> Doc {
        let answer = send(node, Method::GET, "/api/v1/openapi.json", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.media_type, "application/json", "{}", answer.text);
        let doc: Value = serde_json::from_str(&answer.text)
            .unwrap_or_else(|e| panic!("the document is not JSON ({e}): {}", answer.text));
        let components = doc["components"]["schemas"].clone();
        assert!(
            components.as_object().is_some_and(|c| !c.is_empty()),
            "no components.schemas in {doc:#}"
        );
        let defs = rewrite_refs(components);
        let strict_defs = close_objects(&defs);
        Doc {
            doc,
            defs,
            strict_defs,
        }
    }

    fn operation(&self, method: &str, template: &str) -> &Value {
        self.doc["paths"]
            .get(template)
            .and_then(|p| p.get(method))
            .unwrap_or_else(|| panic!("{method} {template} is not documented"))
    }

    /// A component schema (with its refs rewritten).
    fn component(&self, name: &str) -> &Value {
        self.defs
            .get(name)
            .unwrap_or_else(|| panic!("no component schema {name}"))
    }

    /// A validator for `schema` (from the document), its refs resolved against the
    /// components; `strict` closes the documented objects.
    fn validator(&self, schema: &Value, strict: bool) -> jsonschema::Validator {
        let mut root = match rewrite_refs(schema.clone()) {
            Value::Object(map) => map,
            other => panic!("a schema that is not an object: {other}"),
        };
        if strict {
            close_in_place(&mut root, false);
        }
        let defs = if strict {
            &self.strict_defs
        } else {
            &self.defs
        };
        root.insert("$defs".into(), defs.clone());
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .unwrap_or_else(|e| panic!("the documented schema {schema} does not compile: {e}"))
    }

    /// Checks that `answer` is documented for `method template`: its status, its media type
    /// and (for JSON) its body, strictly. Returns the body parsed (JSON) or as a string.
    fn conforms(&self, method: &str, template: &str, answer: &Answer) -> Value {
        let context = format!(
            "{method} {template} → {} ({}): {}",
            answer.status, answer.media_type, answer.text
        );
        let response = self.operation(method, template)["responses"]
            .get(answer.status.as_str())
            .unwrap_or_else(|| panic!("{context}\nthis status is not documented for the route"));
        let content = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{context}\nthe response documents no content"));
        let schema = &content
            .iter()
            .find(|(documented, _)| documented.split(';').next() == Some(&answer.media_type))
            .unwrap_or_else(|| {
                panic!(
                    "{context}\nthe media type is not documented; documented: {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            })
            .1["schema"];
        if answer.media_type != "application/json" {
            assert_eq!(
                schema["type"], "string",
                "{context}\na non-JSON answer documented as {schema}"
            );
            return Value::String(answer.text.clone());
        }
        let body: Value = serde_json::from_str(&answer.text)
            .unwrap_or_else(|e| panic!("{context}\nthe body is not JSON: {e}"));
        self.assert_valid(schema, &body, &context);
        body
    }

    /// Asserts that `body` validates strictly against `schema`, and that a copy with an
    /// undocumented field does not.
    fn assert_valid(&self, schema: &Value, body: &Value, context: &str) {
        let validator = self.validator(schema, true);
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{context}\ndoes not conform to the documented schema {schema}:\n{}",
            errors.join("\n")
        );
        if let Value::Object(map) = body {
            let mut extra = map.clone();
            extra.insert("zz_undocumented".into(), json!(1));
            assert!(
                !validator.is_valid(&Value::Object(extra)),
                "{context}\nthe schema {schema} accepts an undocumented field: the check is vacuous"
            );
        }
    }
}

/// Rewrites `#/components/schemas/X` refs to `#/$defs/X`.
fn rewrite_refs(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        let local = r.replace("#/components/schemas/", "#/$defs/");
                        (k, Value::String(local))
                    }
                    (_, v) => (k, rewrite_refs(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(rewrite_refs).collect()),
        other => other,
    }
}

/// The definitions with every documented object closed (`unevaluatedProperties: false`),
/// except the parts of an `allOf` (a flattened struct), which the `allOf` closes as a whole.
fn close_objects(defs: &Value) -> Value {
    let mut parts = HashSet::new();
    collect_all_of_refs(defs, &mut parts);
    let mut closed = defs.as_object().expect("defs").clone();
    for (name, schema) in closed.iter_mut() {
        if let Value::Object(map) = schema {
            close_in_place(map, parts.contains(name.as_str()));
        }
    }
    Value::Object(closed)
}

fn collect_all_of_refs(value: &Value, out: &mut HashSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(parts)) = map.get("allOf") {
                for part in parts {
                    if let Some(r) = part["$ref"].as_str() {
                        out.insert(r.trim_start_matches("#/$defs/").to_string());
                    }
                }
            }
            map.values().for_each(|v| collect_all_of_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_all_of_refs(v, out)),
        _ => {}
    }
}

fn close_in_place(schema: &mut Map<String, Value>, is_part: bool) {
    if !is_part && (schema.contains_key("properties") || schema.contains_key("allOf")) {
        schema
            .entry("unevaluatedProperties")
            .or_insert(Value::Bool(false));
    }
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for prop in props.values_mut() {
            if let Value::Object(p) = prop {
                close_in_place(p, false);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(Value::Object(s)) = schema.get_mut(key) {
            close_in_place(s, false);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(items)) = schema.get_mut(key) {
            for item in items {
                if let Value::Object(s) = item {
                    close_in_place(s, key == "allOf");
                }
            }
        }
    }
}

async fn send(node: &TestNode, method: Method, path: &str, body: Option<(&str, String)>) -> Answer {
    send_with(&node.client, node, method, path, body).await
}

async fn send_with(
    client: &reqwest::Client,
    node: &TestNode,
    method: Method,
    path: &str,
    body: Option<(&str, String)>,
) -> Answer {
    let url = format!("{}{path}", node.http_url());
    let mut request = client.request(method.clone(), &url);
    if let Some((content_type, body)) = body {
        if !content_type.is_empty() {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nnode log:\n{}", node.log()));
    let status = response.status();
    let media_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    let text = response.text().await.expect("reading the body");
    Answer {
        status,
        media_type,
        text,
    }
}

fn json_body(value: &Value) -> Option<(&'static str, String)> {
    Some(("application/json", value.to_string()))
}

/// The value of `body` at a JSON pointer, or a failure that shows the body.
fn at<'a>(body: &'a Value, pointer: &str) -> &'a Value {
    body.pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {body:#}"))
}

// ---------------------------------------------------------------------------------------
// The document itself.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_and_its_parts_resolve() {
    let node = TestNode::start(&[], &[]).await;
    let doc = Doc::fetch(&node).await;
    let d = &doc.doc;

    let version = d["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi is {:?}", d["openapi"]);
    assert!(
        d["info"]["title"].as_str().is_some_and(|t| !t.is_empty())
            && d["info"]["version"].as_str().is_some_and(|v| !v.is_empty()),
        "info: {}",
        d["info"]
    );

    // Exactly the routes, with exactly their methods.
    let paths = d["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected, "documented routes");

    let mut operation_ids = HashSet::new();
    for (method, path) in ROUTES {
        let op = doc.operation(method, path);
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            !id.is_empty() && operation_ids.insert(id.to_string()),
            "{method} {path}: operationId {id:?} is missing or not unique"
        );
        // Every `{param}` of the path is declared as a required path parameter.
        for param in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            let declared = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == param && p["in"] == "path" && p["required"] == true)
            });
            assert!(
                declared,
                "{method} {path}: no required path parameter {param}: {op:#}"
            );
        }
        // Every error answer of a JSON route is the one error shape.
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            // A WebSocket's success is its upgrade.
            responses.keys().any(|s| s.starts_with('2') || s == "101"),
            "{method} {path}: no success response documented"
        );
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{method} {path} {status}: no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                if path == "/metrics" || path == "/health/ready" {
                    continue; // plain text; the readiness report, documented as such
                }
                let schema = &response["content"]["application/json"]["schema"];
                let name = schema["$ref"].as_str().unwrap_or_default();
                assert!(
                    name == "#/components/schemas/ErrorBody"
                        || (status == "422" && name == "#/components/schemas/InvalidTaskBody"),
                    "{method} {path} {status}: error documented as {schema}"
                );
            }
        }
    }
    assert_eq!(
        doc.operation("post", "/api/v1/tasks")["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/TaskSpec"
    );

    // Authentication: the bearer scheme, and on each /api/v1 operation the scope the node
    // checks (ROUTE_SCOPES) with its 401 and 403; the open routes ask for nothing.
    assert_eq!(
        d["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": d["components"]["securitySchemes"]["bearer"]["description"]}),
        "the bearer scheme"
    );
    for (method, path) in ROUTES {
        let op = doc.operation(method, path);
        if !path.starts_with("/api/v1/") {
            assert!(
                op.get("security").is_none(),
                "{method} {path} is open: {op:#}"
            );
            assert!(
                op["responses"].get("401").is_none() && op["responses"].get("403").is_none(),
                "{method} {path} is open: {op:#}"
            );
            continue;
        }
        let scope = ROUTE_SCOPES
            .iter()
            .find(|(m, r, _)| m.eq_ignore_ascii_case(method) && r == &path)
            .map(|(_, _, scope)| *scope)
            .unwrap_or_else(|| panic!("{method} {path} has no entry in ROUTE_SCOPES"));
        assert_eq!(
            op["security"],
            json!([{"bearer": [scope]}]),
            "{method} {path}"
        );
        for status in ["401", "403"] {
            let response = &op["responses"][status];
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} {status}: {response}"
            );
            assert!(
                response["headers"].get("WWW-Authenticate").is_some(),
                "{method} {path} {status}: {response}"
            );
        }
    }
    for (method, path, media) in [
        ("get", "/metrics", "text/plain"),
        ("get", "/api/v1/tasks/{id}/events", "text/event-stream"),
    ] {
        let content = &doc.operation(method, path)["responses"]["200"]["content"];
        assert!(content.get(media).is_some(), "{method} {path}: {content}");
    }

    // Every ref points at a component.
    let mut refs = Vec::new();
    collect_refs(d, &mut refs);
    assert!(!refs.is_empty(), "no $ref at all in {d:#}");
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a ref outside components.schemas: {r}"));
        doc.component(name);
    }

    // The shapes serde gives: lowercase enums, the agent's flattened identity, string
    // timestamps, `args` any object, the error shape.
    for (name, values) in [
        (
            "Priority",
            &["urgent", "high", "normal", "low", "background"][..],
        ),
        (
            "TaskStatus",
            &[
                "queued",
                "planning",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                "timed_out",
            ][..],
        ),
        (
            "StepStatus",
            &[
                "pending",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                "skipped",
                "awaiting_approval",
            ][..],
        ),
        (
            "Lifecycle",
            &[
                "registering",
                "active",
                "draining",
                "suspended",
                "terminated",
            ][..],
        ),
    ] {
        let schema = doc.component(name);
        assert_eq!(schema["type"], "string", "{name}: {schema}");
        assert_eq!(schema["enum"], json!(values), "{name}: {schema}");
    }
    let role = doc.component("Role");
    assert_eq!(role["type"], "string", "{role}");
    assert!(
        role["enum"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("executor")) && e.contains(&json!("planner"))),
        "{role}"
    );
    let record = doc.component("AgentRecord");
    let identity = at(record, "/allOf/0/$ref");
    assert_eq!(identity, "#/$defs/AgentIdentity", "{record}");
    let identity = doc.component("AgentIdentity");
    for field in ["instance_id", "name", "domain", "role", "node"] {
        assert!(
            identity["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(field))),
            "AgentIdentity.{field} not required: {identity}"
        );
    }
    let own = at(record, "/allOf/1/properties");
    assert!(
        own.get("instance_id").is_none() && own.get("identity").is_none(),
        "the identity is flattened, not nested: {record}"
    );
    for (schema, field) in [
        ("AgentRecord", "/allOf/1/properties/registered_at"),
        ("TaskView", "/properties/created_at"),
        ("TaskView", "/properties/finished_at"),
        ("TaskSummary", "/properties/created_at"),
        ("Attempt", "/properties/started_at"),
    ] {
        let s = at(doc.component(schema), field);
        let ty = &s["type"];
        assert!(
            ty == "string" || ty == &json!(["string", "null"]),
            "{schema}{field}: {s}"
        );
        assert_eq!(s["format"], "date-time", "{schema}{field}: {s}");
    }
    assert_eq!(
        at(doc.component("StepSpec"), "/properties/args"),
        &json!({"type": "object"}),
        "args: any JSON object"
    );
    let error = doc.component("ErrorDetail");
    assert_eq!(
        error["required"],
        json!(["code", "message"]),
        "ErrorDetail: {error}"
    );
    let invalid = doc.component("InvalidTaskDetail");
    assert_eq!(
        at(invalid, "/properties/fields/items/$ref"),
        "#/$defs/FieldError",
        "{invalid}"
    );
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Real answers against the document.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_a_jwt_node_conform_to_the_document() {
    const SECRET: &str = "openapi-test-secret-of-32-bytes-or-more";
    let node = TestNode::start(
        &[],
        &[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            ("MISTER_SMITH__AUTH__SECRET", SECRET),
        ],
    )
    .await;
    let doc = Doc::fetch(&node).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    let read_only = mint(
        &Secret::new(SECRET),
        &Claims {
            sub: "reader".into(),
            scope: Some("tasks:read".into()),
            exp: Some(exp),
            ..Claims::default()
        },
    )
    .expect("minting");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {read_only}")
            .parse()
            .expect("a header value"),
    );
    let reader = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .expect("a client");
    let task = json_body(&json!({"steps": [{"id": "a", "tool": "echo"}]}));
    for (client, want) in [
        (&node.client, StatusCode::UNAUTHORIZED),
        (&reader, StatusCode::FORBIDDEN),
    ] {
        let answer = send_with(client, &node, Method::POST, "/api/v1/tasks", task.clone()).await;
        assert_eq!(answer.status, want, "{}", answer.text);
        let body = doc.conforms("post", "/api/v1/tasks", &answer);
        let code = if want == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "forbidden"
        };
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // The token works where its scope is the one documented.
    let answer = send_with(&reader, &node, Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    doc.conforms("get", "/api/v1/tasks", &answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_conform_to_the_document() {
    let node = TestNode::start(&[], &[]).await;
    let doc = Doc::fetch(&node).await;

    // Health and metrics.
    let live = doc.conforms(
        "get",
        "/health/live",
        &send(&node, Method::GET, "/health/live", None).await,
    );
    assert_eq!(live["status"], "live", "{live}");
    let ready = send(&node, Method::GET, "/health/ready", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    doc.conforms("get", "/health/ready", &ready);
    let metrics = send(&node, Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    let text = doc.conforms("get", "/metrics", &metrics);
    assert!(
        text.as_str().is_some_and(|t| t.contains("ms_")),
        "not our metrics: {text}"
    );

    // Agents: the list and a refused filter.
    let agents = send(&node, Method::GET, "/api/v1/agents", None).await;
    assert_eq!(agents.status, StatusCode::OK, "{}", agents.text);
    let agents = doc.conforms("get", "/api/v1/agents", &agents);
    let listed = at(&agents, "/agents").as_array().expect("agents");
    assert!(!listed.is_empty(), "no agents to check: {agents}");
    assert!(
        listed[0]["instance_id"].is_string() && listed[0]["registered_at"].is_string(),
        "{agents:#}"
    );
    for (query, want) in [
        ("?role=nobody", StatusCode::BAD_REQUEST),
        ("?colour=red", StatusCode::BAD_REQUEST),
        ("?role=executor&state=active", StatusCode::OK),
    ] {
        let answer = send(&node, Method::GET, &format!("/api/v1/agents{query}"), None).await;
        assert_eq!(answer.status, want, "agents{query}: {}", answer.text);
        doc.conforms("get", "/api/v1/agents", &answer);
    }

    // The event feed's refusals before any upgrade: a bad query, a plain GET.
    for query in ["?kind=nope", "?task=x", "?colour=red", ""] {
        let answer = send(
            &node,
            Method::GET,
            &format!("/api/v1/events/ws{query}"),
            None,
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "events/ws{query}: {}",
            answer.text
        );
        doc.conforms("get", "/api/v1/events/ws", &answer);
    }

    // Submissions: what the server accepts, the schema accepts, and the answers conform.
    let task_schema = &doc.operation("post", "/api/v1/tasks")["requestBody"]["content"]["application/json"]
        ["schema"];
    let request_validator = doc.validator(task_schema, false);
    let passing = json!({
        "description": "openapi conformance",
        "priority": "high",
        "idempotency_key": "openapi-1",
        "max_attempts": 2,
        "steps": [
            {"id": "greet", "tool": "echo", "args": {"text": "hello"},
             "expect": {"contains": "hell"}},
            {"id": "again", "tool": "echo", "args": {"text": "{{input}} again"},
             "input_from": "greet", "depends_on": ["greet"], "timeout_secs": 30},
        ],
    });
    let failing = json!({
        "steps": [
            {"id": "wrong", "tool": "echo", "args": {"text": "hello"},
             "expect": {"contains": "zzz"}, "max_attempts": 1},
            {"id": "never", "tool": "echo", "args": {"text": "x"}, "depends_on": ["wrong"]},
        ],
    });
    let sleeping = json!({"priority": "low", "steps": [
        {"id": "nap", "tool": "sleep", "args": {"ms": 600_000}, "timeout_secs": 3600},
    ]});
    let mut ids = Vec::new();
    for task in [&passing, &failing, &sleeping] {
        assert!(
            request_validator.is_valid(task),
            "the documented TaskSpec refuses a task the server takes: {task}"
        );
        let answer = send(&node, Method::POST, "/api/v1/tasks", json_body(task)).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{task}: {}",
            answer.text
        );
        let body = doc.conforms("post", "/api/v1/tasks", &answer);
        assert_eq!(body["created"], true, "{body}");
        ids.push(body["task_id"].as_str().expect("task_id").to_string());
    }
    let (passed, failed, asleep) = (&ids[0], &ids[1], &ids[2]);

    // The same idempotency key: 200, the earlier task.
    let again = send(&node, Method::POST, "/api/v1/tasks", json_body(&passing)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let again = doc.conforms("post", "/api/v1/tasks", &again);
    assert_eq!(again["task_id"], passed.as_str(), "{again}");

    // Refused submissions: each status documented, each body the documented error shape.
    let invalid = json!({"steps": [{"id": "bad id!", "tool": "no-such-tool"}]});
    let unknown_field = json!({"steps": [], "colour": 1});
    let bad_priority = json!({"priority": "asap", "description": "x"});
    for (what, task) in [
        ("unknown field", &unknown_field),
        ("bad priority", &bad_priority),
    ] {
        assert!(
            !request_validator.is_valid(task),
            "{what}: the documented TaskSpec accepts what the server refuses: {task}"
        );
    }
    let big = format!(
        r#"{{"description": "{}", "steps": []}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    for (what, body, want, with_fields) in [
        ("fails validation", json_body(&invalid), 422, Some(true)),
        ("unknown field", json_body(&unknown_field), 422, Some(false)),
        (
            "wrong type",
            json_body(&json!({"steps": "x"})),
            422,
            Some(false),
        ),
        ("bad priority", json_body(&bad_priority), 422, Some(false)),
        (
            "malformed",
            Some(("application/json", "{".to_string())),
            400,
            None,
        ),
        (
            "no content type",
            Some(("", invalid.to_string())),
            415,
            None,
        ),
        ("too large", Some(("application/json", big)), 413, None),
    ] {
        // The server answers 413 before reading the whole body and drops the connection:
        // a client of its own, so no later request lands on that connection.
        let client = common::http_client();
        let answer = send_with(&client, &node, Method::POST, "/api/v1/tasks", body).await;
        assert_eq!(answer.status.as_u16(), want, "{what}: {}", answer.text);
        let body = doc.conforms("post", "/api/v1/tasks", &answer);
        assert!(
            at(&body, "/error/code").is_string() && at(&body, "/error/message").is_string(),
            "{what}: {body}"
        );
        if let Some(with_fields) = with_fields {
            assert_eq!(body["error"]["code"], "invalid_task", "{what}: {body}");
            let fields = body["error"].get("fields");
            assert_eq!(fields.is_some(), with_fields, "{what}: {body}");
            if with_fields {
                let fields = fields.and_then(Value::as_array).expect("fields");
                assert!(
                    fields.iter().any(|f| f["field"] == "steps[0].id")
                        && fields.iter().any(|f| f["field"] == "steps[0].tool"),
                    "{what}: {body}"
                );
            }
        }
    }

    // Cancel: the sleeping task (202), a finished one (409), an unknown one (404).
    let answer = send(
        &node,
        Method::POST,
        &format!("/api/v1/tasks/{asleep}/cancel"),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let outcome = doc.conforms("post", "/api/v1/tasks/{id}/cancel", &answer);
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    wait_final(&node, passed).await;
    for (path, want) in [
        (
            format!("/api/v1/tasks/{asleep}/cancel"),
            StatusCode::ACCEPTED,
        ),
        (
            format!("/api/v1/tasks/{passed}/cancel"),
            StatusCode::CONFLICT,
        ),
        (
            format!("/api/v1/tasks/{NO_TASK}/cancel"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let answer = send(&node, Method::POST, &path, None).await;
        assert_eq!(answer.status, want, "{path}: {}", answer.text);
        doc.conforms("post", "/api/v1/tasks/{id}/cancel", &answer);
    }

    // Each task, once final, read back: statuses, steps, attempts, verdicts, events.
    let mut seen_verdict = false;
    let mut seen_skipped = false;
    for (id, want) in [
        (passed, "succeeded"),
        (failed, "failed"),
        (asleep, "cancelled"),
    ] {
        let task = wait_final(&node, id).await;
        assert_eq!(task["status"], want, "{task:#}");
        let path = format!("/api/v1/tasks/{id}");
        let answer = send(&node, Method::GET, &path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let task = doc.conforms("get", "/api/v1/tasks/{id}", &answer);
        assert!(
            task["finished_at"].is_string()
                && !at(&task, "/events").as_array().expect("events").is_empty(),
            "{task:#}"
        );
        for step in task["steps"].as_array().expect("steps") {
            seen_skipped |= step["status"] == "skipped";
            for attempt in step["attempts"].as_array().expect("attempts") {
                seen_verdict |= attempt["verdict"].is_object();
            }
        }

        // Its event stream: documented media type, each `data:` a documented TaskEvent.
        let events = send(&node, Method::GET, &format!("{path}/events"), None).await;
        assert_eq!(events.status, StatusCode::OK, "{}", events.text);
        doc.conforms("get", "/api/v1/tasks/{id}/events", &events);
        let event_schema = json!({"$ref": "#/components/schemas/TaskEvent"});
        let mut streamed = 0;
        let mut kind = None;
        for line in events.text.lines() {
            if let Some(k) = line.strip_prefix("event:") {
                kind = Some(k.trim().to_string());
            } else if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim())
                    .unwrap_or_else(|e| panic!("an SSE data line that is not JSON ({e}): {line}"));
                doc.assert_valid(&event_schema, &event, &format!("{path}/events: {line}"));
                assert_eq!(kind.as_deref(), event["kind"].as_str(), "{}", events.text);
                streamed += 1;
            }
        }
        assert_eq!(
            streamed,
            task["events"].as_array().map_or(0, Vec::len),
            "the stream of a final task replays its trace: {}",
            events.text
        );
    }
    assert!(
        seen_verdict,
        "no attempt with a verdict: the Verdict schema went unchecked"
    );
    assert!(seen_skipped, "no skipped step was checked");

    // Not found and bad requests on the task routes.
    for (method, template, path, want) in [
        (
            Method::GET,
            "/api/v1/tasks/{id}",
            format!("/api/v1/tasks/{NO_TASK}"),
            404,
        ),
        (
            Method::GET,
            "/api/v1/tasks/{id}/events",
            format!("/api/v1/tasks/{NO_TASK}/events"),
            404,
        ),
        (
            Method::GET,
            "/api/v1/tasks",
            "/api/v1/tasks?status=bogus".into(),
            400,
        ),
        (
            Method::GET,
            "/api/v1/tasks",
            "/api/v1/tasks?limit=0".into(),
            400,
        ),
    ] {
        let answer = send(&node, method.clone(), &path, None).await;
        assert_eq!(
            answer.status.as_u16(),
            want,
            "{method} {path}: {}",
            answer.text
        );
        let body = doc.conforms(&method.as_str().to_lowercase(), template, &answer);
        if want == 404 {
            assert_eq!(body["error"]["code"], "not_found", "{body}");
        }
    }

    // Listing: a full page with a cursor, and the last page without one.
    for (query, cursor) in [
        ("?limit=1", true),
        ("", false),
        ("?status=failed&priority=normal", false),
    ] {
        let path = format!("/api/v1/tasks{query}");
        let answer = send(&node, Method::GET, &path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text);
        let list = doc.conforms("get", "/api/v1/tasks", &answer);
        assert_eq!(list["next_cursor"].is_string(), cursor, "{path}: {list}");
        assert!(
            !list["tasks"].as_array().expect("tasks").is_empty(),
            "{path}: nothing listed to check: {list}"
        );
    }
}

/// Sessions against the scripted provider: every answer of the session routes, refusals
/// included, conforms to the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_answers_conform_to_the_document() {
    let node = common::tasks::scripted_node(&json!({"replies": [
        {"match": "echo", "tool_calls": [{"name": "echo", "arguments": {"text": "hi"}}]},
        {"match": "hi", "reply": "Said hi."}
    ], "default": "fine"}))
    .await;
    let doc = Doc::fetch(&node).await;
    let post = |path: &'static str, body: Value| {
        let node = &node;
        async move { send(node, Method::POST, path, json_body(&body)).await }
    };
    let started = post(
        "/api/v1/sessions",
        json!({"message": "echo", "tools": ["echo"]}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let started = doc.conforms("post", "/api/v1/sessions", &started);
    let id = started["session_id"].as_str().expect("an id").to_string();
    let empty = post("/api/v1/sessions", json!({})).await;
    assert_eq!(empty.status, StatusCode::CREATED, "{}", empty.text);
    doc.conforms("post", "/api/v1/sessions", &empty);
    for (body, want) in [
        (json!({"max_iterations": 0}), 422),
        (json!({"colour": 1}), 422),
    ] {
        let answer = post("/api/v1/sessions", body).await;
        assert_eq!(answer.status.as_u16(), want, "{}", answer.text);
        doc.conforms("post", "/api/v1/sessions", &answer);
    }

    let turns = format!("/api/v1/sessions/{id}/turns");
    let busy = send(
        &node,
        Method::POST,
        &turns,
        json_body(&json!({"message": "x"})),
    )
    .await;
    let session = format!("/api/v1/sessions/{id}");
    wait_final(&node, started["turn"]["task_id"].as_str().expect("a task")).await;
    let view = send(&node, Method::GET, &session, None).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    let view = doc.conforms("get", "/api/v1/sessions/{id}", &view);
    assert_eq!(view["turns"][0]["answer"], "Said hi.", "{view:#}");
    // The second turn may have been refused while the first ran, or taken after it.
    doc.conforms("post", "/api/v1/sessions/{id}/turns", &busy);
    let more = send(
        &node,
        Method::POST,
        &turns,
        json_body(&json!({"message": ""})),
    )
    .await;
    assert_eq!(
        more.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        more.text
    );
    doc.conforms("post", "/api/v1/sessions/{id}/turns", &more);
    let list = send(&node, Method::GET, "/api/v1/sessions?limit=1", None).await;
    let list = doc.conforms("get", "/api/v1/sessions", &list);
    assert!(list["next_cursor"].is_string(), "{list}");
    let bad = send(&node, Method::GET, "/api/v1/sessions?status=closed", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    doc.conforms("get", "/api/v1/sessions", &bad);

    let end = send(&node, Method::POST, &format!("{session}/end"), None).await;
    // A turn taken above may still run: then the end waits for it.
    common::tasks::eventually_within(common::tasks::TASK_DEADLINE, "the end", || async {
        let end = send(&node, Method::POST, &format!("{session}/end"), None).await;
        doc.conforms("post", "/api/v1/sessions/{id}/end", &end);
        (end.status == StatusCode::OK).then_some(()).ok_or(end.text)
    })
    .await;
    doc.conforms("post", "/api/v1/sessions/{id}/end", &end);
    let ended = send(
        &node,
        Method::POST,
        &turns,
        json_body(&json!({"message": "x"})),
    )
    .await;
    assert_eq!(ended.status, StatusCode::CONFLICT, "{}", ended.text);
    doc.conforms("post", "/api/v1/sessions/{id}/turns", &ended);
    for (decision, want) in [("approve", 409), ("deny", 409)] {
        let path = format!("{session}/turns/1/{decision}");
        let answer = send(
            &node,
            Method::POST,
            &path,
            json_body(&json!({"reason": "r"})),
        )
        .await;
        assert_eq!(answer.status.as_u16(), want, "{path}: {}", answer.text);
        doc.conforms(
            "post",
            "/api/v1/sessions/{id}/turns/{turn}/{decision}",
            &answer,
        );
    }
    let unknown = send(
        &node,
        Method::POST,
        &format!("{session}/turns/99/approve"),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    let decide = "/api/v1/sessions/{id}/turns/{turn}/{decision}";
    doc.conforms("post", decide, &unknown);
    let neither = send(
        &node,
        Method::POST,
        &format!("{session}/turns/1/maybe"),
        None,
    )
    .await;
    assert_eq!(neither.status, StatusCode::NOT_FOUND, "{}", neither.text);
    doc.conforms("post", decide, &neither);
    let missing = "/api/v1/sessions/0190a0f0-0000-7000-8000-000000000000";
    let gone = send(&node, Method::GET, missing, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    doc.conforms("get", "/api/v1/sessions/{id}", &gone);
}
