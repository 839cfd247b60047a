//! `/api/v1/openapi.json` against the server's real answers: every REST
//! operation the document lists is called, and each answer must match the
//! document's schema for it, strictly (a field the schema does not name is
//! a failure, so the document cannot fall behind the responses).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp};

/// The served document and the operations checked against it so far.
struct Contract<'a> {
    app: &'a TestApp,
    document: Value,
    checked: BTreeSet<(String, String)>,
}

impl<'a> Contract<'a> {
    async fn load(app: &'a TestApp) -> Self {
        let response = app
            .http
            .get(format!("{}/api/v1/openapi.json", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        Self {
            app,
            document,
            checked: BTreeSet::new(),
        }
    }

    /// Calls `method route` (`{name}` segments filled from `ids` in order),
    /// which must succeed, and checks the answer against the document.
    async fn call(
        &mut self,
        method: &str,
        route: &str,
        ids: &[&str],
        key: &str,
        body: Option<Value>,
    ) -> Value {
        let (status, answer) = self.exchange(method, route, ids, key, body).await;
        assert!(status.is_success(), "{method} {route}: {status} {answer}");
        answer
    }

    async fn exchange(
        &mut self,
        method: &str,
        route: &str,
        ids: &[&str],
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (template, query) = route.split_at(route.find('?').unwrap_or(route.len()));
        let mut path = String::new();
        let mut ids = ids.iter();
        for segment in template.split('/').skip(1) {
            path.push('/');
            if segment.starts_with('{') {
                path.push_str(ids.next().expect("an id for each parameter"));
            } else {
                path.push_str(segment);
            }
        }
        let (status, answer) = self
            .app
            .request(&method.to_uppercase(), &format!("{path}{query}"), Some(key), body)
            .await;
        let operation = &self.document["paths"][template][method];
        assert!(operation.is_object(), "{method} {template} is not documented");
        let documented = operation["responses"][status.as_str()].clone();
        let response = if documented.is_object() {
            documented
        } else {
            assert!(!status.is_success(), "{method} {template} answered {status}, not documented");
            operation["responses"]["default"].clone()
        };
        match &response["content"]["application/json"]["schema"] {
            Value::Null => assert_eq!(answer, Value::Null, "{method} {template}: body"),
            schema => {
                let trail = format!("{method} {template}");
                if let Err(mismatch) = self.validate(schema, &answer, &trail) {
                    panic!("{mismatch}\nthe body: {answer}");
                }
            }
        }
        self.checked.insert((method.to_owned(), template.to_owned()));
        (status, answer)
    }

    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema["$ref"].as_str() {
            Some(target) => {
                let name = target.strip_prefix("#/components/schemas/").unwrap();
                self.resolve(&self.document["components"]["schemas"][name])
            }
            None => schema,
        }
    }

    /// The subset of JSON Schema 2020-12 the document uses, strictly: the
    /// first mismatch, named by its place in the body.
    fn validate(&self, schema: &Value, value: &Value, trail: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(options) = schema["anyOf"].as_array() {
            return match options.iter().any(|option| self.validate(option, value, trail).is_ok()) {
                true => Ok(()),
                false => Err(format!("{trail}: {value} fits none of {options:?}")),
            };
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            return Err(format!("{trail}: {value} is not one of {allowed:?}"));
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => return Ok(()), // any JSON
        };
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(number) if number.is_u64() || number.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !(types.contains(&kind) || (kind == "integer" && types.contains(&"number"))) {
            return Err(format!("{trail}: {value} is {kind}, not {types:?}"));
        }
        if let (Some(minimum), Some(number)) = (schema["minimum"].as_i64(), value.as_i64())
            && number < minimum
        {
            return Err(format!("{trail}: {number} is below {minimum}"));
        }
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.validate(&schema["items"], item, &format!("{trail}[{index}]"))?;
                }
            }
            Value::Object(fields) => {
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap_or_default();
                    if !fields.contains_key(name) {
                        return Err(format!("{trail}: {name} is missing"));
                    }
                }
                for (name, field) in fields {
                    let inner = format!("{trail}.{name}");
                    match (&schema["properties"][name], &schema["additionalProperties"]) {
                        (Value::Null, Value::Null) => {
                            return Err(format!("{inner} is not in the document"));
                        }
                        (Value::Null, extra) => self.validate(extra, field, &inner)?,
                        (property, _) => self.validate(property, field, &inner)?,
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_the_document_says() {
    let app = TestApp::spawn().await;
    let mut api = Contract::load(&app).await;
    let admin = ADMIN_KEY;

    // Spaces and keys.
    api.call("get", "/healthz", &[], admin, None).await;
    let space = api
        .call("post", "/api/v1/spaces", &[], admin, Some(json!({ "name": "docs" })))
        .await;
    let space_id = space["id"].as_str().unwrap().to_owned();
    let space_route = "/api/v1/spaces/{space_id}";
    let s = space_id.as_str();
    api.call("get", "/api/v1/spaces", &[], admin, None).await;
    api.call("get", space_route, &[s], admin, None).await;
    let settings = json!({
        "anonymousProgressStreams": true,
        "push": { "url": "https://push.example/wake", "names": ["report"], "headers": { "x-a": "b" } },
        "slack": { "url": "https://hooks.slack.com/services/T/B/x", "events": ["dead"] },
        "retention": { "completed": 3600, "dead": 0, "killed": null },
        "concurrency": {
            "default": 5,
            "names": { "report": 2 },
            "rates": { "report": { "limit": 100, "periodSeconds": 60, "perKey": true } },
        },
    });
    let changed = api.call("patch", space_route, &[s], admin, Some(settings)).await;
    assert_eq!(changed["concurrency"]["names"]["report"], 2, "{changed}");
    api.call("post", "/api/v1/spaces/{space_id}/public-token", &[s], admin, None)
        .await;
    let secret_route = "/api/v1/spaces/{space_id}/webhook-secret";
    api.call("post", secret_route, &[s], admin, None).await;
    api.call("delete", secret_route, &[s], admin, None).await;
    for action in ["pause", "resume"] {
        let route = format!("/api/v1/spaces/{{space_id}}/{action}");
        api.call("post", &route, &[s], admin, Some(json!({ "name": "other" })))
            .await;
    }
    let tokens = "/api/v1/spaces/{space_id}/tokens";
    let body = json!({ "name": "all", "scopes": ["jobs:create", "jobs:read", "jobs:kill", "jobs:worker"] });
    let token = api.call("post", tokens, &[s], admin, Some(body)).await;
    let key = token["key"].as_str().unwrap().to_owned();
    let spare = json!({ "name": "spare", "scopes": "jobs:read" });
    let spare = api.call("post", tokens, &[s], admin, Some(spare)).await;
    api.call("get", tokens, &[s], admin, None).await;
    let spare_id = spare["id"].as_str().unwrap();
    api.call("delete", "/api/v1/spaces/{space_id}/tokens/{token_id}", &[s, spare_id], admin, None)
        .await;

    // Jobs: a create with every field, an array create, and a worker's life.
    let jobs = "/api/v1/spaces/{space_id}/jobs";
    let full = json!({
        "name": "report",
        // Parsed, not written with `json!`, so the number keeps its spelling.
        "payload": serde_json::from_str::<Value>(r#"{"n": 1.50, "list": [1, 2]}"#).unwrap(),
        "maxRetries": 1,
        "timeoutSeconds": 60,
        "callbackUrl": "https://hooks.example/done",
        "callbackHeaders": { "x-secret": "s" },
        "retryBackoff": { "type": "fixed", "delaySeconds": 1, "maxDelaySeconds": 60 },
        "priority": 5,
        "idempotencyKey": "once",
        "concurrencyKey": "tenant-a",
        "concurrencyLimit": 2,
    });
    let created = api.call("post", jobs, &[s], &key, Some(full.clone())).await;
    let job_id = created["id"].as_str().unwrap().to_owned();
    let replay = api.call("post", jobs, &[s], &key, Some(full)).await;
    assert_eq!(replay["replayed"], true, "{replay}");
    let later = json!([{ "name": "other", "maxRetries": 0 }, { "name": "other", "scheduledFor": "2099-01-01T00:00:00Z" }]);
    let many = api.call("post", jobs, &[s], &key, Some(later)).await;
    let other_id = many[0]["id"].as_str().unwrap().to_owned();
    api.call("get", &format!("{jobs}?include=progress&limit=10"), &[s], &key, None)
        .await;
    api.call("get", "/api/v1/spaces/{space_id}/concurrency?keys=tenant-a", &[s], &key, None)
        .await;

    let delivered = api
        .call(
            "post",
            "/api/v1/spaces/{space_id}/jobs/poll",
            &[s],
            &key,
            Some(json!({ "types": ["report"], "count": 1 })),
        )
        .await;
    assert_eq!(delivered["jobs"][0]["id"], job_id.as_str(), "{delivered}");
    // The payload comes back as the client wrote it.
    assert_eq!(delivered["jobs"][0]["payload"]["n"].to_string(), "1.50");
    let lease = delivered["jobs"][0]["leaseId"].as_str().unwrap().to_owned();
    let fence = json!({ "attemptNumber": 0, "leaseId": lease });
    let j = job_id.as_str();
    api.call("post", "/api/v1/jobs/{job_id}/ack", &[j], &key, Some(fence.clone()))
        .await;
    api.call("post", "/api/v1/jobs/{job_id}/progress", &[j], &key, Some(json!({ "percent": 50 })))
        .await;
    api.call("get", "/api/v1/jobs/{job_id}/progress", &[j], &key, None).await;
    api.call("post", "/api/v1/jobs/{job_id}/checkpoint", &[j], &key, Some(json!({ "page": 3 })))
        .await;
    api.call("post", "/api/v1/jobs/{job_id}/event", &[j], &key, Some(json!({ "step": "a" })))
        .await;
    api.call("post", "/api/v1/jobs/{job_id}/keepalive", &[j], &key, Some(fence.clone()))
        .await;
    let lines = json!({ "lines": [{ "level": "info", "message": "one" }, { "message": "two" }] });
    api.call("post", "/api/v1/jobs/{job_id}/logs", &[j], &key, Some(lines)).await;
    api.call("get", "/api/v1/jobs/{job_id}/logs?before=3", &[j], &key, None).await;
    let mut done = fence.clone();
    done["result"] = json!({ "ok": true });
    let completed = api
        .call("post", "/api/v1/jobs/{job_id}/complete", &[j], &key, Some(done))
        .await;
    assert_eq!(completed["status"], "completed", "{completed}");
    api.call("get", "/api/v1/jobs/{job_id}", &[j], &key, None).await;

    let o = other_id.as_str();
    api.call("post", "/api/v1/jobs/{job_id}/claim", &[o], &key, None).await;
    let failed = api
        .call("post", "/api/v1/jobs/{job_id}/fail", &[o], &key, Some(json!({ "error": { "code": 7 } })))
        .await;
    assert_eq!(failed["status"], "dead", "{failed}");
    api.call("post", "/api/v1/jobs/{job_id}/retry", &[o], admin, None).await;
    api.call("post", "/api/v1/jobs/{job_id}/kill", &[o], &key, Some(json!({ "reason": "docs" })))
        .await;
    api.call("delete", "/api/v1/jobs/{job_id}", &[o], admin, None).await;
    let bulk = json!({ "action": "kill", "filter": { "status": "scheduled" }, "dryRun": true });
    api.call("post", "/api/v1/spaces/{space_id}/jobs/bulk", &[s], admin, Some(bulk))
        .await;
    // An error is documented too.
    let (status, missing) = api
        .exchange("get", "/api/v1/jobs/{job_id}", &["nope"], &key, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    // Schedules.
    let schedules = "/api/v1/spaces/{space_id}/schedules";
    let schedule = json!({
        "cron": "0 * * * *",
        "timeZone": "Europe/Paris",
        "job": { "name": "hourly", "payload": [1], "priority": 2, "retryBackoff": { "type": "exponential", "delaySeconds": 3 } },
        "overlap": "skip",
        "catchUp": "one",
    });
    let created = api
        .call("post", &format!("{schedules}?next=2"), &[s], admin, Some(schedule))
        .await;
    let schedule_id = created["id"].as_str().unwrap().to_owned();
    let ids = [s, schedule_id.as_str()];
    let one = "/api/v1/spaces/{space_id}/schedules/{schedule_id}";
    api.call("get", schedules, &[s], admin, None).await;
    api.call("get", one, &ids, admin, None).await;
    api.call("patch", one, &ids, admin, Some(json!({ "catchUpLimit": 3 }))).await;
    api.call("post", &format!("{one}/pause"), &ids, admin, None).await;
    api.call("post", &format!("{one}/resume"), &ids, admin, None).await;
    api.call("delete", one, &ids, admin, None).await;

    // Every REST operation the document lists was called (WebSockets are
    // checked by the realtime suite).
    let documented: BTreeSet<(String, String)> = api.document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(|method| (method.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .filter(|(_, path)| !path.starts_with("/api/v1/realtime"))
        .collect();
    let unchecked: Vec<_> = documented.difference(&api.checked).collect();
    assert!(unchecked.is_empty(), "not called: {unchecked:?}");

    // The checker is not vacuous: a field the document does not name, a
    // wrong type and a missing field are each caught.
    let job = json!({ "$ref": "#/components/schemas/Job" });
    let mut listed = api.app.get(&format!("/api/v1/spaces/{s}/jobs"), &key).await.1;
    let sample = listed[0].take();
    assert!(api.validate(&job, &sample, "job").is_ok());
    let mut extra = sample.clone();
    extra["undocumented"] = json!(1);
    let mut wrong = sample.clone();
    wrong["attemptNumber"] = json!("0");
    let mut missing = sample;
    missing.as_object_mut().unwrap().remove("status");
    for bad in [extra, wrong, missing] {
        assert!(api.validate(&job, &bad, "job").is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_document_needs_no_key() {
    let app = TestApp::spawn().await;
    let (status, document) = app.request("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["paths"]["/api/v1/spaces/{space_id}/jobs"]["post"].is_object());
}
