//! Headless Chromium driven through chromedriver (Debian's `chromium` and
//! `chromium-driver`), one browser at a time, and the helpers a test uses to look at a
//! page as a person would: wait until an element shows a text, take a screenshot.

use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::AbortHandle;

/// One browser at a time: Chromium is heavy on a two-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// How long a page may take to show what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Where chromedriver is: `CHROMEDRIVER`, else `chromedriver` on the PATH.
fn chromedriver() -> Option<String> {
    if let Ok(path) = std::env::var("CHROMEDRIVER") {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromedriver"))
            .find(|path| path.is_file())
            .map(|path| path.display().to_string())
    })
}

/// A chromedriver and a headless Chromium session.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts a browser, or `None` (with a message saying why) when chromedriver is not
    /// installed here. On CI (`CI` set) a missing chromedriver fails the test instead.
    pub async fn start() -> Option<Browser> {
        let Some(driver_path) = chromedriver() else {
            let message = "chromedriver not found (CHROMEDRIVER or PATH): install Debian's \
                `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver)";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("SKIPPED: {message}");
            return None;
        };
        let turn = ONE_AT_A_TIME.lock().await;
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {driver_path}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on {port} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900",
                "--disable-dev-shm-usage",
            ],
        });
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if std::path::Path::new(&binary).exists() {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through {url}: {e}"));
        Some(Browser {
            client,
            _driver: driver,
            _turn: turn,
        })
    }

    /// Waits until the element shows text for which `ok` holds; returns that text.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = String::from("(no such element)");
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if ok(&text) {
                    return text;
                }
                last = text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{css}` did not show the expected text within {PATIENCE:?}; it shows: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's address satisfies `ok`.
    pub async fn wait_url(&self, ok: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let url = self.client.current_url().await.expect("current URL");
            if ok(url.as_str()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page stayed at {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the whole page.
    pub async fn page_text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("a body")
            .text()
            .await
            .expect("its text")
    }

    /// Runs a script in the page and returns its value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("run {script}: {e}"))
    }

    /// Saves a screenshot as `docs/NAME.png` when `ISOTEST_UI_SCREENSHOTS` is set (the
    /// committed ones are made so; a plain test run leaves the tree alone).
    pub async fn screenshot(&self, name: &str) {
        if std::env::var_os("ISOTEST_UI_SCREENSHOTS").is_none() {
            return;
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = format!("{}/../docs/{name}.png", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    pub async fn close(self) {
        let Browser { client, .. } = self;
        let _ = client.close().await;
    }
}

/// A TCP proxy in front of the producer that can drop every connection through it at
/// once, as a flaky network or a restarted load balancer would.
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    connections: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CuttableProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let connections: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let tracked = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked
                    .lock()
                    .expect("not poisoned")
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        CuttableProxy {
            addr,
            connections,
            accept,
        }
    }

    /// Drops every open connection; new ones are accepted as before.
    pub fn cut(&self) -> usize {
        let mut connections = self.connections.lock().expect("not poisoned");
        let open = connections.iter().filter(|c| !c.is_finished()).count();
        for connection in connections.drain(..) {
            connection.abort();
        }
        open
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
