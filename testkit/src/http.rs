//! Calls to a running server's REST API and metrics, as tests make them.

use std::time::{Duration, Instant};

use crate::ADMIN_KEY;

/// POSTs `body` as JSON with `key` in `x-api-key`.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
}

/// POSTs `body` and answers the JSON of a 2xx reply; None for any other
/// outcome (a refused call, a process that is down).
pub async fn post_ok(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    let response = post_json(http, url, key, &body).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// GETs `url` with `key` and answers the JSON of a 2xx reply; None for any
/// other outcome.
pub async fn get_ok(http: &reqwest::Client, url: &str, key: &str) -> Option<serde_json::Value> {
    let response = http.get(url).header("x-api-key", key).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The gateway's `/metrics` at `base` (its core's metrics too), read with
/// the admin key.
pub async fn scrape_metrics(http: &reqwest::Client, base: &str) -> reqwest::Result<String> {
    http.get(format!("{base}/metrics"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

/// The value of the sample `series` (name and labels) in a scrape.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
}

/// Waits (up to 10 s) until the gateway at `base` reports the sample
/// `series` (name and labels) at `wanted` on `/metrics`, which carries its
/// core's metrics too.
pub async fn metric_reaches(http: &reqwest::Client, base: &str, series: &str, wanted: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape_metrics(http, base).await.unwrap_or_default();
        let value = metric_sample(&text, series);
        if value == Some(wanted) {
            return;
        }
        if Instant::now() >= deadline {
            let family = series.split('{').next().unwrap_or(series);
            let samples: Vec<&str> = text
                .lines()
                .filter(|line| line.starts_with(family))
                .collect();
            panic!("{series} stayed {value:?}, not {wanted}; the family: {samples:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new space named `name` with `settings` PATCHed onto it, and a
/// `jobs:worker` key for it: (space id, key).
pub async fn space_for_workers(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    settings: serde_json::Value,
) -> (String, String) {
    let body = serde_json::json!({ "name": name });
    let space = post_ok(http, &format!("{base}/api/v1/spaces"), ADMIN_KEY, body)
        .await
        .expect("the space is created");
    let space_id = space["id"].as_str().expect("a space id").to_owned();
    let response = http
        .patch(format!("{base}/api/v1/spaces/{space_id}"))
        .header("x-api-key", ADMIN_KEY)
        .json(&settings)
        .send()
        .await
        .expect("the server answers");
    assert!(response.status().is_success(), "{settings} refused");
    let token = post_ok(
        http,
        &format!("{base}/api/v1/spaces/{space_id}/tokens"),
        ADMIN_KEY,
        serde_json::json!({ "name": "workers", "scopes": ["jobs:worker"] }),
    )
    .await
    .expect("a worker key");
    let key = token["key"].as_str().expect("a key").to_owned();
    (space_id, key)
}

/// An RFC 3339 instant of a reply, in milliseconds since the epoch.
pub fn instant_millis(iso: &serde_json::Value) -> i64 {
    iso.as_str()
        .and_then(|text| text.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("an RFC 3339 instant: {iso}"))
        .as_millisecond()
}
