//! A minimal W3C WebDriver client over reqwest, driving Debian's `chromium` headless through
//! `chromedriver` (started here on a free port, killed on drop). Just what the console's
//! browser tests need: navigate, find, click, type, read attributes, cookies, screenshots.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn which(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for dir in path.split(':') {
            let p = std::path::Path::new(dir).join(name);
            if p.is_file() {
                return Some(p.to_string_lossy().into_owned());
            }
        }
    }
    None
}

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    _driver: tokio::process::Child,
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `None` (with a printed notice)
    /// when they are not installed, unless `ENTITLED_REQUIRE_BROWSER=1`, then it panics.
    pub async fn start() -> Option<Browser> {
        let required = std::env::var("ENTITLED_REQUIRE_BROWSER").as_deref() == Ok("1");
        let (Some(driver), Some(chromium)) = (
            which(&["chromedriver"]),
            which(&["chromium", "chromium-browser", "google-chrome"]),
        ) else {
            assert!(
                !required,
                "ENTITLED_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: chromium and chromedriver are not installed; the console's browser \
                 test did not run (set ENTITLED_REQUIRE_BROWSER=1 to make this an error)"
            );
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,2400"]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session body");
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Some(Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: child,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method.clone(), path, body).await {
            Ok(v) => v,
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }

    /// The call's value, or its W3C error (`stale element reference` when the page it was
    /// found on has gone: a form submission navigated meanwhile).
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        // W3C: POST bodies are JSON objects, even empty ones.
        if method == reqwest::Method::POST {
            req = req.json(&body.unwrap_or_else(|| json!({})));
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status} {v}"));
        }
        Ok(v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every element matching the CSS selector (none: empty).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The element matching the CSS selector, waiting up to 30 s for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element matches {css:?} on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element by `data-testid`.
    pub async fn testid(&self, id: &str) -> Element {
        self.find(&format!("[data-testid=\"{id}\"]")).await
    }

    pub async fn click(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            None,
        )
        .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.0),
            None,
        )
        .await;
    }

    pub async fn type_text(&self, e: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The attribute; `None` when absent, or when the element's page has gone meanwhile.
    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        self.try_call(
            reqwest::Method::GET,
            &format!("/element/{}/attribute/{name}", e.0),
            None,
        )
        .await
        .ok()?
        .as_str()
        .map(str::to_string)
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", e.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Chooses the `<option>` of a `<select>` by its value, as a person would: clicking it.
    pub async fn select(&self, select_testid: &str, value: &str) {
        let option = self
            .find(&format!(
                "[data-testid=\"{select_testid}\"] option[value=\"{value}\"]"
            ))
            .await;
        self.click(&option).await;
    }

    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The value of cookie `name` (HttpOnly ones included: WebDriver sees them).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = self.call(reqwest::Method::GET, "/cookie", None).await;
        all.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str().map(str::to_string))
    }

    pub async fn delete_cookies(&self) {
        self.call(reqwest::Method::DELETE, "/cookie", None).await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot base64")
    }

    /// Waits until `f` holds (up to 30 s; a loaded CI machine is slow), or panics with the
    /// page.
    pub async fn wait_until<F, Fut>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f().await {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} on {}:\n{}",
                    self.url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session so Chromium exits; chromedriver is killed on drop.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(url).send().await;
                });
            }
        })
        .join();
    }
}
