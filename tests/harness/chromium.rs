//! A real browser for the console's tests: Debian's headless Chromium,
//! driven through its chromedriver over WebDriver (fantoccini), and the
//! screenshots it takes kept as test artefacts.
//!
//! `scripts/browser.sh` installs both packages when they are missing (the
//! test script runs it first); a machine without them fails these tests
//! with that hint, never skips them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Where screenshots go: `$CRMSYNC_ARTEFACTS/console`, or the workspace's
/// `target/artefacts/console`.
pub fn artefacts() -> PathBuf {
    let base = std::env::var_os("CRMSYNC_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artefacts"));
    base.join("console")
}

/// One headless Chromium session, with the chromedriver that serves it.
///
/// chromedriver runs in a process group of its own, which the browsers it
/// starts join; dropping a session (a test that panics drops it while
/// unwinding) kills the whole group. Killing chromedriver alone, as
/// `kill_on_drop` does, left its Chromium processes running, orphaned,
/// after every failed test.
#[derive(Debug)]
pub struct Chromium {
    pub client: Client,
    driver: tokio::process::Child,
    /// chromedriver's process group (its pid), until killed.
    group: Option<u32>,
    /// Screenshots of this session are named `<prefix>-<name>.png`.
    prefix: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Chromium {
    /// Starts chromedriver on a free port and opens a browser session.
    pub async fn start(prefix: &str) -> Chromium {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver package: `bash scripts/browser.sh` installs it)");
        let group = driver.id().expect("chromedriver's pid");
        // From here a panic (no session, chromedriver gone) kills the group.
        let mut pending = Group { driver: Some(driver), group };
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // No sandbox: tests run as root in containers, where
                // Chromium's own sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"],
            },
        });
        let caps = caps.as_object().expect("an object").clone();
        let mut last = None;
        // chromedriver takes a moment to listen, Chromium another to start.
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    std::fs::create_dir_all(artefacts()).expect("the artefacts folder");
                    let driver = pending.driver.take().expect("not handed over yet");
                    return Chromium { client, driver, group: Some(group), prefix: prefix.to_owned() };
                }
                Err(e) => last = Some(e),
            }
            if let Some(Ok(Some(status))) = pending.driver.as_mut().map(tokio::process::Child::try_wait) {
                panic!("chromedriver exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no browser session from chromedriver: {last:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// The page's visible text. A click that submits a form does not wait
    /// for the next page, so a body read while it loads can go stale: read
    /// again.
    pub async fn text(&self) -> String {
        let mut last = None;
        for _ in 0..50 {
            match self.client.find(Locator::Css("body")).await {
                Ok(body) => match body.text().await {
                    Ok(text) => return text,
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no page text: {last:?}");
    }

    pub async fn find(&self, css: &str) -> Element {
        self.located(Locator::Css(css)).await
    }

    pub async fn xpath(&self, path: &str) -> Element {
        self.located(Locator::XPath(path)).await
    }

    async fn located(&self, locator: Locator<'_>) -> Element {
        match self.client.find(locator).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no {locator:?} on {}: {e}\n{}",
                self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default(),
                self.text().await
            ),
        }
    }

    /// Types into an input, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("cleared");
        input.send_keys(text).await.expect("typed");
    }

    /// Clicks the button with this text (the first, in document order)
    /// and waits for the page it leads to.
    pub async fn click_button(&self, text: &str) {
        let button = self.xpath(&format!("//button[contains(normalize-space(.), {})]", xpath_literal(text))).await;
        self.click_to_next_page(&button).await;
    }

    /// Clicks an element that leads to another page (a form's button) and
    /// waits until that page has loaded: WebDriver's click returns once
    /// the click is dispatched, before the form's answer arrives.
    pub async fn click_to_next_page(&self, element: &Element) {
        self.mark_page().await;
        element.click().await.unwrap_or_else(|e| panic!("clicking: {e}"));
        self.wait_for_next_page().await;
    }

    /// Marks the page shown, so that [`Chromium::wait_for_next_page`] ends
    /// on the next one, not this one.
    pub async fn mark_page(&self) {
        self.client.execute("window.crmsyncOldPage = true", vec![]).await.expect("marking the page");
    }

    /// Waits until the page marked has given way to another, loaded.
    pub async fn wait_for_next_page(&self) {
        for _ in 0..100 {
            let loaded =
                self.client.execute("return window.crmsyncOldPage === undefined && document.readyState === 'complete'", vec![]).await;
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new page within 5 s");
    }

    /// Signs in through the sign-in form.
    pub async fn sign_in(&self, base: &str, name: &str, password: &str) {
        self.goto(&format!("{base}/sign-in")).await;
        self.fill("input[name=name]", name).await;
        self.fill("input[name=password]", password).await;
        self.click_button("Sign in").await;
    }

    /// Saves a screenshot of the page as `<prefix>-<name>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = artefacts().join(format!("{}-{name}.png", self.prefix));
        std::fs::write(&path, png).expect("the screenshot written");
        path
    }

    /// chromedriver's process group: it and the browsers it started.
    pub fn process_group(&self) -> u32 {
        self.group.expect("running")
    }

    /// Ends the session, then its chromedriver and whatever is left of
    /// its group.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        if let Some(group) = self.group.take() {
            kill_group(group);
        }
        let _ = self.driver.kill().await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            kill_group(group);
        }
    }
}

/// chromedriver while no session holds it: its group is killed on drop.
struct Group {
    driver: Option<tokio::process::Child>,
    group: u32,
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.driver.is_some() {
            kill_group(self.group);
        }
    }
}

/// Kills every process of the group `group` (SIGKILL: a panicking test
/// waits for nothing). Through kill(1), as the workspace forbids `unsafe`
/// and so `libc::kill`. Called before chromedriver, the group's leader, is
/// reaped (tokio reaps it after it is dropped or killed), so the group's
/// id cannot have been taken by another process; or after chromedriver
/// exited by itself, when what is left of the group still holds the id.
fn kill_group(group: u32) {
    let _ =
        std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A string as an XPath literal (XPath has no escapes).
fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') { format!("'{s}'") } else { format!("\"{s}\"") }
}
